//! Sockets in other network namespaces, and the TCP forwarders `aloft dev` runs through them.
//!
//! A socket belongs to the namespace it was created in, whatever thread uses it later. So a
//! fresh thread joins the namespace, creates the socket and exits; the socket is then handed
//! to tokio. No shared (runtime) thread ever changes namespace.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// Runs `f` on a new thread inside the network namespace `/run/netns/<name>`.
pub async fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = format!("/run/netns/{name}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = std::fs::File::open(&path)
            .and_then(|ns| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)
            })
            .and_then(|()| f());
        let _ = tx.send(result);
    });
    rx.await
        .map_err(|_| io::Error::other(format!("the thread in namespace {name} panicked")))?
}

/// Where a forwarder's outgoing connections are made: in a namespace, or in this one.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub netns: Option<String>,
    pub target: SocketAddr,
}

impl Dialer {
    pub async fn connect(&self) -> io::Result<tokio::net::TcpStream> {
        let target = self.target;
        let stream = match &self.netns {
            Some(ns) => {
                in_netns(ns, move || {
                    std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                })
                .await?
            }
            None => {
                return tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(target),
                )
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?;
            }
        };
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        tokio::net::TcpStream::from_std(stream)
    }
}

/// Binds a TCP listener in `netns` (or here) and hands it to tokio.
pub async fn listen(netns: Option<&str>, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let listener = match netns {
        Some(ns) => in_netns(ns, move || std::net::TcpListener::bind(addr)).await?,
        None => std::net::TcpListener::bind(addr)?,
    };
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Requests served, per client city and serving region, as read from the demo app's answers.
#[derive(Debug, Clone, Default)]
pub struct Served(Arc<Mutex<BTreeMap<(String, String), u64>>>);

impl Served {
    fn record(&self, city: &str, region: &str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((city.to_string(), region.to_string()))
            .or_default() += 1;
    }

    /// Answers so far per (client city, serving region).
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One line per city: `from syd: syd 12, iad 3`.
    pub fn summary(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_city: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((city, region), n) in map.iter() {
            by_city
                .entry(city)
                .or_default()
                .push(format!("{region} {n}"));
        }
        by_city
            .into_iter()
            .map(|(city, parts)| format!("from {city}: {}", parts.join(", ")))
            .collect()
    }
}

/// What a forwarder reports about the traffic it carries.
#[derive(Debug, Clone)]
pub struct Report {
    /// The client city whose traffic this forwarder carries (for the traffic summary).
    pub city: String,
    pub served: Served,
    /// Print a line per answer of the demo app.
    pub verbose: bool,
}

/// Accepts on `listener` and splices each connection to a new connection from `dialer`,
/// until `stop`. Answers of the demo app (which name their region) are counted in `report`.
pub fn spawn_forwarder(
    listener: tokio::net::TcpListener,
    dialer: Dialer,
    report: Option<Report>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (client, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "forwarder accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let dialer = dialer.clone();
            let report = report.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = splice(client, dialer, report) => {}
                }
            });
        }
    })
}

async fn splice(client: tokio::net::TcpStream, dialer: Dialer, report: Option<Report>) {
    let _ = client.set_nodelay(true);
    let backend = match dialer.connect().await {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(target = %dialer.target, error = %e, "forwarder cannot connect");
            return;
        }
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = backend.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut bw).await;
        let _ = bw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut tail = Vec::new();
        loop {
            let n = match br.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(r) = &report {
                tail.extend_from_slice(&buf[..n]);
                for region in take_regions(&mut tail) {
                    r.served.record(&r.city, &region);
                    if r.verbose {
                        println!("request from {} served in {region}", r.city);
                    }
                }
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Takes the regions named by the demo app's answers out of `buf` (`region=ams` in its text
/// answer, `"region":"ams"` in its JSON one), keeping an unfinished tail for the next read.
fn take_regions(buf: &mut Vec<u8>) -> Vec<String> {
    const MARKERS: [&[u8]; 2] = [b"region=", b"\"region\":\""];
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut found = Vec::new();
    let mut pos = 0;
    loop {
        let hit = MARKERS
            .iter()
            .filter_map(|m| find(&buf[pos..], m).map(|i| (pos + i, m.len())))
            .min();
        let Some((i, len)) = hit else { break };
        let start = i + len;
        let end = start
            + buf[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
        if end == buf.len() {
            // The name may go on in the next read.
            buf.drain(..i);
            return found;
        }
        if end > start {
            found.push(String::from_utf8_lossy(&buf[start..end]).into_owned());
        }
        pos = end;
    }
    // Keep the last few bytes: a marker may have been cut in two.
    let keep_from = pos.max(buf.len().saturating_sub(16));
    buf.drain(..keep_from);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_read_from_text_and_json_answers_even_when_split() {
        let mut buf =
            b"HTTP/1.1 200 OK\r\n\r\nHello from Aloft! app=hello region=syd machine=1\n".to_vec();
        assert_eq!(take_regions(&mut buf), ["syd"]);
        let mut buf = b"{\"app\":\"hello\",\"region\":\"ia".to_vec();
        assert!(take_regions(&mut buf).is_empty());
        buf.extend_from_slice(b"d\",\"machine\":\"x\"}\n... region=ams ...");
        assert_eq!(take_regions(&mut buf), ["iad", "ams"]);
        let mut buf = b"no marker here at all, just a long enough body".to_vec();
        assert!(take_regions(&mut buf).is_empty());
        buf.extend_from_slice(b"region=fra\n");
        assert_eq!(take_regions(&mut buf), ["fra"]);
    }
}

//! A small authoritative DNS server on a UDP socket, for ownership records: TXT and CNAME
//! records a test sets; every other question gets an empty answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_server::proto::op::{Message, MessageType};
use hickory_server::proto::rr::rdata::{CNAME, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

type Records = Arc<Mutex<HashMap<(String, RecordType), RData>>>;

pub struct TestDns {
    pub addr: SocketAddr,
    records: Records,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Records = Arc::default();
        let served = records.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut answer = Message::new(
                    query.metadata.id,
                    MessageType::Response,
                    query.metadata.op_code,
                );
                for q in &query.queries {
                    let name = q
                        .name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    let found = served.lock().unwrap().get(&(name, q.query_type())).cloned();
                    if let Some(data) = found {
                        answer
                            .answers
                            .push(Record::from_rdata(q.name().clone(), 60, data));
                    }
                    answer.add_query(q.clone());
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns {
            addr,
            records,
            task,
        }
    }

    pub fn set_txt(&self, name: &str, value: &str) {
        self.records.lock().unwrap().insert(
            (name.to_owned(), RecordType::TXT),
            RData::TXT(TXT::new(vec![value.to_owned()])),
        );
    }

    pub fn set_cname(&self, name: &str, target: &str) {
        let target = Name::from_ascii(format!("{target}.")).unwrap();
        self.records.lock().unwrap().insert(
            (name.to_owned(), RecordType::CNAME),
            RData::CNAME(CNAME(target)),
        );
    }
}

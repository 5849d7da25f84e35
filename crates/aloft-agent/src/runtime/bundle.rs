//! The OCI bundle of one machine: `config.json` built with `oci-spec`, and the image user
//! resolved against the machine's rootfs.

use std::collections::HashSet;
use std::path::Path;

use aloft_init::protocol::{INIT_PATH, LOG_DIR, RUN_CONFIG_PATH, RUN_DIR};
use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_namespaces,
    get_default_readonly_paths, Capability, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use oci_spec::OciSpecError;

use super::userns::IdRange;
use super::{MachinePaths, SandboxSpec};

/// CFS period used for CPU quotas (100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default capability set without `CAP_NET_RAW` (raw sockets: spoofed packets and
/// sniffing on the machine's link) and `CAP_MKNOD` (device nodes).
pub(crate) fn default_capabilities() -> HashSet<Capability> {
    use Capability::*;
    [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect()
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Result<Mount, OciSpecError> {
    let mut options = vec![
        "rbind".to_string(),
        "nosuid".to_string(),
        "nodev".to_string(),
    ];
    options.push(if read_only { "ro" } else { "rw" }.to_string());
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
}

/// Build the OCI runtime spec of a machine. `init_binary` is the host path of `aloft-init`.
pub(crate) fn build_spec(
    spec: &SandboxSpec,
    paths: &MachinePaths,
    init_binary: &Path,
    pids_limit: i64,
    seccomp: bool,
    ids: Option<IdRange>,
) -> Result<Spec, OciSpecError> {
    let caps = default_capabilities();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(vec![INIT_PATH.to_string(), RUN_CONFIG_PATH.to_string()])
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ])
        .cwd("/")
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .build()?;

    let mut mounts = get_default_mounts();
    if ids.is_some() && spec.netns_path.is_some() {
        // The host mounted this network namespace's sysfs for the machine (see userns.rs).
        let sys = super::userns::sys_dir(paths);
        mounts.retain(|m| m.destination() != Path::new("/sys"));
        mounts.push(
            MountBuilder::default()
                .destination("/sys")
                .typ("bind")
                .source(sys)
                .options(
                    ["rbind", "ro", "nosuid", "nodev", "noexec"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()?,
        );
    }
    mounts.push(bind(init_binary, INIT_PATH, true)?);
    mounts.push(bind(&paths.run_config, RUN_CONFIG_PATH, true)?);
    mounts.push(bind(&paths.log, LOG_DIR, false)?);
    mounts.push(bind(&paths.run, RUN_DIR, false)?);
    mounts.push(bind(&paths.hosts, "/etc/hosts", true)?);
    mounts.push(bind(&paths.resolv_conf, "/etc/resolv.conf", true)?);
    for m in &spec.mounts {
        mounts.push(bind(&m.source, &m.destination, m.read_only)?);
    }

    let mut namespaces: Vec<LinuxNamespace> = get_default_namespaces()
        .into_iter()
        .map(|mut ns| {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(spec.netns_path.clone());
            }
            ns
        })
        .collect();
    if ids.is_some()
        && !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User)
    {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()?,
        );
    }

    let memory_bytes =
        i64::try_from(spec.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?])
        .memory(LinuxMemoryBuilder::default().limit(memory_bytes).build()?)
        .cpu(
            LinuxCpuBuilder::default()
                .quota(i64::from(spec.cpus.max(1)) * CPU_PERIOD_US as i64)
                .period(CPU_PERIOD_US)
                .build()?,
        )
        .pids(LinuxPidsBuilder::default().limit(pids_limit).build()?)
        .build()?;

    let mut masked = get_default_maskedpaths();
    for extra in [
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ] {
        if !masked.iter().any(|p| p == extra) {
            masked.push(extra.to_string());
        }
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(format!("/aloft/{}", spec.id))
        .masked_paths(masked)
        .readonly_paths(get_default_readonly_paths());
    if seccomp {
        linux = linux.seccomp(super::seccomp::profile()?);
    }
    if let Some(range) = ids {
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(range.host)
            .size(range.size)
            .build()?;
        linux = linux.uid_mappings(vec![map]).gid_mappings(vec![map]);
    }

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(&paths.rootfs)
                .readonly(false)
                .build()?,
        )
        .hostname(spec.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .build()
}

/// Why an image user could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("User {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("Group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
}

/// Resolve an image `user` (`""`, `uid`, `uid:gid`, `name`, `name:group`) to numeric ids,
/// looking names up in the rootfs's `/etc/passwd` and `/etc/group` (symlinks are not
/// followed, so an image cannot point these at host files).
pub(crate) fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), UserError> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_plain(&rootfs.join("etc/passwd"));
    // passwd entries: name:x:uid:gid:...
    let entry = |pred: &dyn Fn(&str, u32) -> bool| -> Option<(u32, u32)> {
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
            pred(f[0], uid).then_some((uid, gid))
        })
    };
    let (uid, mut gid) = if user_part.is_empty() {
        (0, 0)
    } else if let Ok(uid) = user_part.parse::<u32>() {
        entry(&|_, u| u == uid).unwrap_or((uid, 0))
    } else {
        entry(&|name, _| name == user_part)
            .ok_or_else(|| UserError::UnknownUser(user_part.to_string()))?
    };
    if let Some(group) = group_part.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read_plain(&rootfs.join("etc/group"))
                .lines()
                .find_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    (f.first() == Some(&group)).then(|| f.get(2)?.parse().ok())?
                })
                .ok_or_else(|| UserError::UnknownGroup(group.to_string()))?,
        };
    }
    Ok((uid, gid))
}

/// The home directory of `uid` from the rootfs's `/etc/passwd`; `/root` for an unlisted
/// root and `/` for any other unlisted user (Docker's defaults for `HOME`).
pub(crate) fn home_dir(rootfs: &Path, uid: u32) -> String {
    read_plain(&rootfs.join("etc/passwd"))
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let home = f.get(5).filter(|h| !h.is_empty())?;
            (f.get(2)?.parse::<u32>().ok()? == uid).then(|| home.to_string())
        })
        .unwrap_or_else(|| if uid == 0 { "/root" } else { "/" }.to_string())
}

/// Contents of a regular file, or empty when it is missing, a symlink, or its parent is one.
fn read_plain(path: &Path) -> String {
    let regular = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| !m.file_type().is_symlink())
            .unwrap_or(false)
    };
    if path.parent().is_some_and(|p| !regular(p)) || !regular(path) {
        return String::new();
    }
    std::fs::read_to_string(path).unwrap_or_default()
}

#[cfg(test)]
mod unit {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        dir
    }

    #[test]
    fn users_resolve_by_number_and_name() {
        let root = rootfs();
        let r = |u: &str| resolve_user(root.path(), u);
        assert_eq!(r("").unwrap(), (0, 0));
        assert_eq!(r("app").unwrap(), (1000, 1001));
        assert_eq!(r("1000").unwrap(), (1000, 1001));
        assert_eq!(r("4242").unwrap(), (4242, 0));
        assert_eq!(r("app:staff").unwrap(), (1000, 50));
        assert_eq!(r("7:8").unwrap(), (7, 8));
        assert!(matches!(r("nobody"), Err(UserError::UnknownUser(u)) if u == "nobody"));
        assert!(matches!(r("app:wheel"), Err(UserError::UnknownGroup(g)) if g == "wheel"));
    }

    #[test]
    fn home_comes_from_passwd_with_docker_defaults() {
        let root = rootfs();
        assert_eq!(home_dir(root.path(), 1000), "/home/app");
        assert_eq!(home_dir(root.path(), 0), "/root");
        assert_eq!(home_dir(root.path(), 4242), "/");
    }

    fn sandbox_spec(netns: Option<&str>) -> SandboxSpec {
        SandboxSpec {
            id: "m1".into(),
            hostname: "m1".into(),
            layers: vec!["/layers/a".into()],
            persist_rootfs: false,
            process: crate::runtime::ProcessSpec {
                args: vec!["/bin/true".into()],
                env: Vec::new(),
                cwd: "/".into(),
                user: String::new(),
            },
            cpus: 1,
            memory_mb: 64,
            netns_path: netns.map(Into::into),
            hosts_file: String::new(),
            resolv_conf: String::new(),
            stop_signal: 15,
            kill_timeout: std::time::Duration::from_secs(5),
            mounts: Vec::new(),
        }
    }

    #[test]
    fn machines_get_their_id_range_and_fewer_capabilities() {
        let paths = MachinePaths::new("/data/machines/m1".into(), "/dev/shm/aloft-test/m1".into());
        let range = IdRange {
            host: 1_065_536,
            size: 65_536,
        };
        let spec = sandbox_spec(Some("/run/netns/aloft-m1"));
        let oci = build_spec(&spec, &paths, Path::new("/init"), 10, true, Some(range)).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        let namespaces = linux.namespaces().as_ref().unwrap();
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User));
        for maps in [linux.uid_mappings(), linux.gid_mappings()] {
            let map = &maps.as_ref().unwrap()[0];
            assert_eq!(
                (map.container_id(), map.host_id(), map.size()),
                (0, 1_065_536, 65_536)
            );
        }
        // The network namespace is the host's: the host's sysfs of it is bound read-only.
        let mounts = oci.mounts().as_ref().unwrap();
        let sys: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/sys"))
            .collect();
        assert_eq!(sys.len(), 1);
        assert_eq!(sys[0].typ().as_deref(), Some("bind"));
        assert_eq!(
            sys[0].source().as_deref(),
            Some(Path::new("/data/machines/m1/sys"))
        );
        assert!(sys[0]
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string()));
        let caps = oci
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let set = set.as_ref().unwrap();
            assert!(!set.contains(&Capability::NetRaw) && !set.contains(&Capability::Mknod));
            assert!(set.contains(&Capability::NetBindService));
        }
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert_eq!(
            oci.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );

        // Without a range: no user namespace, and sysfs is mounted by runc as before.
        let plain = build_spec(&spec, &paths, Path::new("/init"), 10, true, None).unwrap();
        let linux = plain.linux().as_ref().unwrap();
        assert!(linux.uid_mappings().is_none());
        assert!(plain
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/sys") && m.typ().as_deref() == Some("sysfs")));
    }

    #[test]
    fn passwd_symlinks_are_not_followed() {
        let root = rootfs();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "evil:x:5:5::/:/bin/sh\n").unwrap();
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("passwd"),
            root.path().join("etc/passwd"),
        )
        .unwrap();
        assert!(resolve_user(root.path(), "evil").is_err());
    }
}

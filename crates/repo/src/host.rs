//! Host and user names recorded in key, lock and snapshot files.

/// This machine's host name (empty when unknown).
pub fn hostname() -> String {
    // uname(2)'s node name is what gethostname(2) returns on Linux.
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The current user's name, from `USER` or the uid.
pub fn username() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let uid = rustix::process::getuid();
            if uid.is_root() {
                "root".into()
            } else {
                uid.as_raw().to_string()
            }
        })
}

/// The current process's uid and gid.
pub fn ids() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

//! Host and user names recorded in key, lock and snapshot files.

/// This machine's host name (empty when unknown).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The current user's name, from `USER` or the uid.
pub fn username() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: getuid has no failure mode.
            let uid = unsafe { libc::getuid() };
            if uid == 0 {
                "root".into()
            } else {
                uid.to_string()
            }
        })
}

/// The current process's uid and gid.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid have no failure modes.
    unsafe { (libc::getuid(), libc::getgid()) }
}

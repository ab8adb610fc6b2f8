//! User and group names for uids/gids, resolved through libc (NSS) with a cache.
//!
//! The lookups are `unsafe` libc calls: no crate in the dependency tree wraps
//! `getpwuid_r`/`getgrgid_r` safely (rustix leaves NSS to libc; `nix` and `uzers` are not
//! dependencies), and these two are small enough to check by hand.

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;

/// Caches uid → user name and gid → group name lookups (a walk sees few distinct ids).
#[derive(Default)]
pub(crate) struct NameCache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

/// Upper bound for the lookup buffer; entries larger than this are treated as unknown.
const MAX_BUF: usize = 1 << 20;

impl NameCache {
    /// The user name of `uid`, if the system knows one.
    pub(crate) fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| lookup_user(uid))
            .clone()
    }

    /// The group name of `gid`, if the system knows one.
    pub(crate) fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| lookup_group(gid))
            .clone()
    }
}

fn lookup_user(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let mut pwd = MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf.len()` is the buffer's real size.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                pwd.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < MAX_BUF {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success `result` points at `pwd`, whose `pw_name` is a NUL-terminated
        // string inside `buf`, alive for this scope.
        let name = unsafe { CStr::from_ptr((*result).pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

fn lookup_group(gid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let mut grp = MaybeUninit::<libc::group>::uninit();
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `lookup_user`.
        let rc = unsafe {
            libc::getgrgid_r(
                gid,
                grp.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < MAX_BUF {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: as in `lookup_user`.
        let name = unsafe { CStr::from_ptr((*result).gr_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_uid_and_gid_resolve_to_names() {
        let mut cache = NameCache::default();
        assert_eq!(cache.user(0).as_deref(), Some("root"));
        assert_eq!(cache.group(0).as_deref(), Some("root"));
        // An id nobody has resolves to None and is cached as such.
        assert_eq!(cache.user(3_999_999_999), None);
        assert!(cache.users.contains_key(&3_999_999_999));
    }
}

#!/usr/bin/env python3
"""Evicts the regular files beneath DIR from the page cache (posix_fadvise DONTNEED per file;
drop_caches needs root on the host), as a sidecar's backup of a volume finds them.

    benches/evict.py DIR
"""
import os
import sys

for dp, _ds, fs in os.walk(os.fsencode(sys.argv[1])):
    for f in fs:
        p = os.path.join(dp, f)
        if os.path.isfile(p) and not os.path.islink(p):
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

#!/usr/bin/env python3
"""Writes a deterministic tar stream of many small files to stdout (issue 13's memory bench).

  gen_tar_files.py FILES [--same] [--links] [--per-dir N]

FILES regular files of 8-40 bytes, 1,000 per directory (N with --per-dir: FILES for one wide
directory) (d0000/, d0001/, ...), each with its own
content (so each is a data blob of its own, as real small files are), or all the same with
--same (one data blob: what grows is then the archiver, not the repository index). --links adds
a hard link to every 1,000th file at the end of the stream. Plain ustar headers, written by
hand for speed (about a million members in ~10 s). Use with measure.py, e.g.:

  benches/measure.py --stdin-cmd 'benches/gen_tar_files.py 1000000' -- \\
      target/release/snapback backup --stdin --stdin-filename gen.tar
"""
import sys


def header(name, kind, size, link=b""):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000755\0" if kind == b"5" else b"0000644\0"
    h[108:116] = b"0001750\0"
    h[116:124] = b"0001750\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"14000000000\0"
    h[148:156] = b"        "
    h[156:157] = kind
    h[157:157 + len(link)] = link
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def main():
    args = sys.argv[1:]
    files = int(args[0])
    same = "--same" in args
    links = "--links" in args
    per_dir = int(args[args.index("--per-dir") + 1]) if "--per-dir" in args else 1000
    out = sys.stdout.buffer
    buf = []
    for i in range(files):
        if i % per_dir == 0:
            buf.append(header(b"d%04d/" % (i // per_dir), b"5", 0))
        data = b"x\n" if same else b"small file %d %s\n" % (i, b"y" * (i % 24))
        buf.append(header(b"d%04d/f%07d" % (i // per_dir, i), b"0", len(data)))
        buf.append(data + b"\0" * (-len(data) % 512))
        if len(buf) > 30000:
            out.write(b"".join(buf))
            buf = []
    if links:
        buf.append(header(b"links/", b"5", 0))
        for i in range(0, files, 1000):
            name = b"d%04d/f%07d" % (i // per_dir, i)
            buf.append(header(b"links/l%07d" % i, b"1", 0, name))
    buf.append(b"\0" * 1024)
    out.write(b"".join(buf))
    out.flush()


if __name__ == "__main__":
    main()

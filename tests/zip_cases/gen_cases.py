#!/usr/bin/env python3
"""Generate cases.h: zip archives written by Python's zipfile (and two built by hand with
struct, checked by reading them back with zipfile), with what zipfile says about every entry.

test_zip.c includes the result, so the expected values come from Python, not from zip.c.
Writes to the path given, or to stdout; the output is the same on every run (fixed dates, a
seeded generator). Needs Python 3.11.4 or later: older zipfile modules (Debian 12's 3.11.2
among them) write the local header of a force_zip64 entry without the 0xffffffff size
markers (CPython gh-103861), which changes the bytes of the "zip64" case. From the
repository root:
    python3 tests/zip_cases/gen_cases.py tests/zip_cases/cases.h
"""
import io
import random
import struct
import sys
import zipfile
import zlib


def zi(name, method):
    """A ZipInfo with a fixed date, so that cases.h is the same on every run."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = method
    return info


def data_offset(buf, info):
    """Where the entry's data starts, read from its local header here (not by zip.c)."""
    off = info.header_offset
    sig, = struct.unpack_from("<I", buf, off)
    assert sig == 0x04034B50
    nlen, xlen = struct.unpack_from("<HH", buf, off + 26)
    return off + 30 + nlen + xlen


def stored():
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr(zi("arch/data.pkl", zipfile.ZIP_STORED), b"\x80\x02}q\x00.")
        z.writestr(zi("arch/data/0", zipfile.ZIP_STORED), bytes(range(256)) * 3)
        z.writestr(zi("arch/Empty", zipfile.ZIP_STORED), b"")
        z.writestr(zi("arch/MixedCase.TXT", zipfile.ZIP_STORED), b"Hello, zip\n")
        z.writestr(zi("arch/version", zipfile.ZIP_STORED), b"3\n")
    return b.getvalue()


def deflate():
    rnd = random.Random(1)
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        text = b"the quick brown fox jumps over the lazy dog\n" * 2500
        z.writestr(zi("d/text.txt", zipfile.ZIP_DEFLATED), text)
        z.writestr(zi("d/empty", zipfile.ZIP_DEFLATED), b"")
        noise = bytes(rnd.randrange(256) for _ in range(3000))
        z.writestr(zi("d/random.bin", zipfile.ZIP_DEFLATED), noise)
        z.writestr(zi("d/stored.bin", zipfile.ZIP_STORED), b"not compressed")
        z.writestr(zi("d/level9", zipfile.ZIP_DEFLATED), bytes(100000), compresslevel=9)
    return b.getvalue()


def comment():
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr(zi("c/a", zipfile.ZIP_STORED), b"first")
        z.writestr(zi("c/b", zipfile.ZIP_STORED), b"second")
        z.comment = bytes((i * 7) % 251 for i in range(3000)).replace(b"PK", b"pk")
    return b.getvalue()


def forced_zip64():
    """force_zip64 puts a zip64 field in the local headers only (small sizes)."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in (("f/one", b"1" * 500), ("f/two", b"two\n" * 40)):
            with z.open(zi(name, zipfile.ZIP_DEFLATED), "w", force_zip64=True) as f:
                f.write(data)
    return b.getvalue()


def handmade_zip64():
    """Central directory fields 0xFFFFFFFF with zip64 extras (all three for the first entry,
    only the offset for the second), zip64 end record and locator, and a classic end record
    of 0xFFFF/0xFFFFFFFF, as a writer does for archives over 4 GB."""
    out = bytearray()
    entries = [("h/big", b"zip64 data " * 10, 0), ("h/small", b"just the offset", 8)]
    central = bytearray()
    for name, data, method in entries:
        nb = name.encode()
        payload = data if method == 0 else zlib.compress(data, 9)[2:-4]
        crc = zlib.crc32(data)
        local = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0, crc,
                           len(payload), len(data), len(nb), 0) + nb + payload
        if name == "h/big":
            extra = struct.pack("<HHQQQ", 1, 24, len(data), len(payload), local)
            cs = us = off = 0xFFFFFFFF
        else:
            extra = struct.pack("<HHQ", 1, 8, local)
            cs, us, off = len(payload), len(data), 0xFFFFFFFF
        # An unrelated extra field first, so the zip64 one has to be searched for.
        extra = struct.pack("<HH", 0x5455, 5) + b"\x01\x00\x00\x00\x00" + extra
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0, crc,
                               cs, us, len(nb), len(extra), 0, 0, 0, 0, off) + nb + extra
    cd_off = len(out)
    out += central
    z64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries),
                       len(central), cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    buf = bytes(out)
    with zipfile.ZipFile(io.BytesIO(buf)) as z:  # Python must agree before we rely on it
        for name, data, _ in entries:
            assert z.read(name) == data, name
    return buf


def duplicates():
    """Two entries named alike (one differs only in case): refused as ambiguous."""
    b = io.BytesIO()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
            z.writestr(zi("dup/x", zipfile.ZIP_STORED), b"first")
            z.writestr(zi("dup/X", zipfile.ZIP_STORED), b"second")
            z.writestr(zi("dup/x", zipfile.ZIP_STORED), b"third")
    return b.getvalue()


CASES = [
    ("stored", stored),
    ("deflate", deflate),
    ("comment", comment),
    ("forced_zip64", forced_zip64),
    ("handmade_zip64", handmade_zip64),
    ("duplicates", duplicates),
]


def c_bytes(buf):
    lines = []
    for i in range(0, len(buf), 20):
        lines.append("    " + "".join("0x%02x," % c for c in buf[i:i + 20]))
    return "\n".join(lines)


def c_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv):
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-") and argv[1] != "-"):
        sys.exit("usage: gen_cases.py [OUT]   (default, or -: stdout)")
    if sys.version_info < (3, 11, 4):
        sys.exit("gen_cases.py: needs Python >= 3.11.4 (zipfile's force_zip64 local headers)")
    out = ["/* cases.h - generated by gen_cases.py from Python's zipfile; do not edit. */",
           "#include <stddef.h>", "#include <stdint.h>", "",
           "typedef struct zc_entry {",
           "    const char *name;",
           "    uint16_t method, flags;",
           "    uint32_t crc;",
           "    uint64_t csize, usize, data_offset;",
           "} zc_entry;", "",
           "typedef struct zc_case {",
           "    const char *what;",
           "    const uint8_t *bytes;",
           "    size_t len;",
           "    const zc_entry *entries;",
           "    size_t n_entries;",
           "} zc_case;", ""]
    table = []
    for what, make in CASES:
        buf = make()
        with zipfile.ZipFile(io.BytesIO(buf)) as z:
            infos = z.infolist()
            for i in infos:
                if i.filename not in ("dup/x", "dup/X"):
                    assert zlib.crc32(z.read(i)) == i.CRC
        out.append("static const uint8_t zc_%s_bytes[%d] = {" % (what, len(buf)))
        out.append(c_bytes(buf))
        out.append("};")
        out.append("static const zc_entry zc_%s_entries[] = {" % what)
        for i in infos:
            out.append("    {%s, %d, 0x%04x, 0x%08xu, %d, %d, %d}," % (
                c_str(i.filename), i.compress_type, i.flag_bits, i.CRC, i.compress_size,
                i.file_size, data_offset(buf, i)))
        out.append("};")
        table.append("    {%s, zc_%s_bytes, sizeof zc_%s_bytes, zc_%s_entries, %d}," % (
            c_str(what), what, what, what, len(infos)))
    out.append("")
    out.append("static const zc_case zc_cases[] = {")
    out += table
    out.append("};")
    text = "\n".join(out) + "\n"
    if len(argv) == 2 and argv[1] != "-":
        with open(argv[1], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv)

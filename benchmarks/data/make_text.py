"""Regenerate ``stdlib_docstrings.txt``: the fixed evaluation text of ``benchmarks/quantize.py``.

The text is the module docstrings of a fixed list of Python standard-library modules, in that order,
with whitespace normalised. It is generated once and shipped (docstrings change between Python
versions; the shipped file is what the benchmark reads). Run from the repository root::

    python benchmarks/data/make_text.py
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

MODULES = [
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "colorsys",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "email",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "mimetypes",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "profile",
    "pstats",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "statistics",
    "string",
    "stringprep",
    "struct",
    "subprocess",
    "symtable",
    "tabnanny",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "token",
    "tokenize",
    "trace",
    "traceback",
    "tracemalloc",
    "types",
    "typing",
    "unittest",
    "urllib",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "zipfile",
    "zipimport",
    "zlib",
]


def main() -> None:
    parts = []
    for name in MODULES:
        try:
            doc = importlib.import_module(name).__doc__ or ""
        except ImportError:
            continue
        doc = re.sub(r"[ \t]+", " ", doc).strip()
        doc = re.sub(r"\n\s*\n+", "\n\n", doc)
        if len(doc) > 80:
            parts.append(doc)
    out = Path(__file__).with_name("stdlib_docstrings.txt")
    out.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {out} ({len(parts)} modules, {sum(map(len, parts))} characters)")


if __name__ == "__main__":
    main()

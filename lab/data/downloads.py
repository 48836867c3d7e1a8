"""Downloads of the image datasets: mirrors, published checksums, an atomic fetch with progress."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from reference.errors import InputError

MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}
# MD5 of the published archives (the values torchvision checks against).
MD5 = {
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
}


def find_or_download(name, folder, base, allow_download):
    """The file ``base`` or ``base.gz`` in ``folder``; downloaded (``base.gz``) when missing."""
    for candidate in (folder / base, folder / (base + ".gz")):
        if candidate.is_file():
            return candidate
    if not allow_download:
        raise InputError(f"{name}: {base}[.gz] not found in {folder}; put the file there or allow downloading "
                         "(download=True; the CLI downloads by default)")
    gz = base + ".gz"
    return download([m + gz for m in MIRRORS[name]], folder / gz, MD5[name][gz])


def download(urls, dest, md5):
    """Fetch the first URL that works into ``dest`` (atomically), checking its MD5. Else InputError."""
    from tqdm.auto import tqdm
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", leave=False) as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk), digest.update(chunk), bar.update(len(chunk))
            if digest.hexdigest() != md5:
                problems.append(f"{url}: checksum mismatch (MD5 {digest.hexdigest()}, expected {md5})")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:
            problems.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise InputError(f"could not download {dest.name} into {dest.parent}:\n  " + "\n  ".join(problems)
                     + f"\nDownload it by hand and put it at {dest}, or check the network connection.")


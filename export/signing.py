"""Ed25519 signatures over a bundle's manifest, so a tampered bundle is refused on the device.

The manifest lists every file of the bundle with its sha256 and size, so signing the manifest's
exact bytes covers every byte of the bundle: change any file and its hash no longer matches;
change the manifest (hashes, tolerance, labels, input spec) and the signature no longer matches.
The signature is `manifest.sig` next to the manifest: the 64 raw signature bytes, base64-encoded.
Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public) as `generate_keypair` writes
them, or as `openssl genpkey -algorithm ed25519 -out key.pem` and
`openssl pkey -in key.pem -pubout -out key.pub.pem` do.

>>> import tempfile, pathlib
>>> from export._examples import tiny_bundle
>>> with tempfile.TemporaryDirectory() as d:
...     d = pathlib.Path(d)
...     private, public = generate_keypair(d / "key.pem")
...     bundle = tiny_bundle(d / "b")
...     _ = sign_bundle(bundle, private)
...     verify_signature(bundle, public)
...     (bundle / "model.onnx").write_bytes(b"tampered")  # (hashes catch this; the signature the manifest)
...     _ = (bundle / "manifest.json").write_text((bundle / "manifest.json").read_text().replace("fp32", "int8"))
...     verify_signature(bundle, public)
Traceback (most recent call last):
...
export.errors.BundleError: ...manifest.sig: the signature does not match manifest.json: the bundle was changed after it was signed, or signed with another key. Fix: ...
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from export.errors import BundleError
from export.manifest import MANIFEST

__all__ = ["SIGNATURE", "PublicKeyLike", "generate_keypair", "load_public_key", "sign_bundle", "signature_status",
           "verify_signature"]

SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 4 << 20  # a manifest is a few KB; bounded so a hostile one cannot exhaust memory
MAX_KEY_BYTES = 16 << 10

PublicKeyLike = Ed25519PublicKey | str | os.PathLike[str] | bytes


def generate_keypair(private_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM, mode 0600) and its public key next to it (`<name>.pub.pem`)."""
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.stem + ".pub.pem")
    for path in (private_path, public_path):
        if path.exists():
            raise BundleError("a key file already exists there; refusing to overwrite it", where=str(path),
                              fix="choose another path, or move the old key away")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never world-readable, even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise BundleError(f"the {what} file is larger than a key can be", where=str(path),
                              fix=f"pass an Ed25519 {what} in PEM form")
        return path.read_bytes()
    except OSError as err:
        raise BundleError(f"cannot read the {what} ({err.strerror or err})", where=str(path),
                          fix="check the path") from None


def _load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    data = _read_key_file(Path(path), "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise BundleError(f"not a PEM private key without a password ({str(err).splitlines()[0][:80]})",
                          where=os.fspath(path), fix="generate one with `edgetier keygen KEY.pem`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"the key is {type(key).__name__.removeprefix('_')}, not Ed25519", where=os.fspath(path),
                          fix="generate one with `edgetier keygen KEY.pem`")
    return key


def load_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM bytes, or the path of a PEM file."""
    if isinstance(key, Ed25519PublicKey):
        return key
    where = "public_key"
    if isinstance(key, (str, os.PathLike)):
        where = os.fspath(key)
        key = _read_key_file(Path(key), "public key")
    try:
        loaded = serialization.load_pem_public_key(bytes(key))
    except (ValueError, TypeError) as err:
        raise BundleError(f"not a PEM public key ({str(err).splitlines()[0][:80]})", where=where,
                          fix="pass the .pub.pem written by `edgetier keygen`") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise BundleError("the public key is not Ed25519", where=where, fix="pass the .pub.pem written by `edgetier keygen`")
    return loaded


def read_manifest_bytes(root: Path) -> bytes:
    """The exact bytes of `manifest.json`, bounded in size (what the signature covers)."""
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"no {MANIFEST} in the bundle (or it is not a regular file), so nothing in it can be "
                          "trusted", where=str(root), fix="re-export the bundle, or re-copy the whole folder")
    with open(path, "rb") as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES:,} bytes", where=str(path),
                          fix="re-export the bundle")
    return data


def sign_bundle(bundle_dir: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> Path:
    """Sign the bundle's manifest with the private key (PEM file); writes and returns `manifest.sig`.

    Hashes are checked first: signing a bundle whose files do not match its manifest would vouch for them.
    """
    from export.manifest import verify_bundle

    root = Path(bundle_dir)
    key = _load_private_key(private_key)
    verify_bundle(root)
    signature = key.sign(read_manifest_bytes(root))
    out = root / SIGNATURE
    tmp = root / f".{SIGNATURE}.tmp-{os.getpid()}"
    tmp.write_bytes(base64.b64encode(signature) + b"\n")
    os.replace(tmp, out)
    return out


def verify_signature(bundle_dir: str | os.PathLike[str], public_key: PublicKeyLike) -> None:
    """Refuse the bundle unless `manifest.sig` is a valid signature of `manifest.json` by `public_key`.

    Reads only the two small files: nothing else of the bundle is trusted before this passes.
    """
    root = Path(bundle_dir)
    key = load_public_key(public_key)
    if not root.is_dir():
        raise BundleError("bundle folder not found", where=str(root), fix="check the path")
    sig_path = root / SIGNATURE
    if sig_path.is_symlink() or not sig_path.is_file():
        raise BundleError(f"the bundle is not signed (no {SIGNATURE}), and a public key was given", where=str(root),
                          fix="sign it with `edgetier sign BUNDLE --key KEY.pem`, or load it without a public key")
    raw = sig_path.read_bytes()[:1024]
    try:
        signature = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    try:
        key.verify(signature, read_manifest_bytes(root))
    except InvalidSignature:
        raise BundleError(f"the signature does not match {MANIFEST}: the bundle was changed after it was signed, "
                          "or signed with another key", where=str(sig_path),
                          fix="re-copy the bundle from its source, or check that this is the signer's public key") from None


def signature_status(bundle_dir: str | os.PathLike[str], public_key: PublicKeyLike | None = None) -> str:
    """`"unsigned"`, `"signed (not verified: no public key given)"` or `"signed, verified"` (refused if invalid)."""
    root = Path(bundle_dir)
    if not (root / SIGNATURE).exists():
        if public_key is not None:
            verify_signature(root, public_key)  # raises: a key was given for an unsigned bundle
        return "unsigned"
    if public_key is None:
        return "signed (not verified: no public key given)"
    verify_signature(root, public_key)
    return "signed, verified"

"""Keyed, one-way maps for de-identification, built on the site key of :mod:`.sitekey` (no Qt).

- :class:`Keyed` derives, with HMAC-SHA256 under that key, the new UIDs (``2.25.<128-bit int>``,
  the ISO/IEC 9834-8 UUID-derived root PS3.5 B.2 allows without a registered root), the patient
  pseudonym and the per-patient date offset.  The same key gives the same values on every run (two
  exports of one study months apart match); without the key the originals cannot be recovered,
  nor confirmed by guessing (a keyed hash, not a plain one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

def site_key() -> bytes:
    """The site key of :mod:`.sitekey` (``config_dir()/site.key``, 0600, created on first use;
    shared with the audit trail)."""
    from .sitekey import site_key as _site_key

    return _site_key()


def fingerprint(key: bytes) -> str:
    """The key's public fingerprint, computed as :func:`.sitekey.key_fingerprint` does (so the
    summary and the audit trail name the same key the same way); reveals nothing of the key."""
    return hashlib.sha256(b"imaging-assist site key fingerprint\x00" + key).hexdigest()[:16]


class Keyed:
    """HMAC-SHA256 derivations under one key, each in its own domain (so a UID hash can never
    equal a patient-ID hash of the same text)."""

    def __init__(self, key: bytes):
        self.key = key
        self._uid_cache: dict[str, str] = {}

    def _mac(self, domain: str, text: str) -> bytes:
        return hmac.new(self.key, domain.encode() + b"\0" + text.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    def uid(self, old: str) -> str:
        """The new UID for ``old``: ``2.25.`` + the first 128 bits of the HMAC as a decimal
        integer (at most 39 digits + 5 = 44 characters < 64)."""
        old = old.strip().rstrip("\0")
        if not old:
            return old
        new = self._uid_cache.get(old)
        if new is None:
            new = "2.25." + str(int.from_bytes(self._mac("uid", old)[:16], "big"))
            self._uid_cache[old] = new
        return new

    def patient_id(self, old_id: str, issuer: str = "") -> str:
        """The keyed pseudonym of a patient: ``IA-`` + 20 base32 characters (100 bits)."""
        mac = self._mac("patient", f"{issuer}\0{old_id.strip()}")
        return "IA-" + base64.b32encode(mac[:15]).decode("ascii")[:20]

    def path_name(self, path: str) -> str:
        """The keyed pseudonym of a file or folder path: 12 lower-case base32 characters (60
        bits; unique within any real folder), the same for the same path under the same key."""
        return base64.b32encode(self._mac("path", path)[:10]).decode("ascii").lower()[:12]

    def day_offset(self, patient: str) -> int:
        """Days added to every date of one patient under Retain Longitudinal Temporal Information
        with Modified Dates: -3650 .. -366 (one to ten years back, never 0), the same for all of
        that patient's studies, so intervals are kept exactly."""
        v = int.from_bytes(self._mac("dates", patient.strip())[:8], "big")
        return -(366 + v % (3650 - 366 + 1))

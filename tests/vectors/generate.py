#!/usr/bin/env python3
"""Independent derivation of the known-answer vectors in tests/vectors/record_v2.json.

Uses the `cryptography` package (OpenSSL), not this crate, so the Rust tests compare our
implementation against a second one. Run:
    python3 tests/vectors/generate.py > tests/vectors/record_v2.json
(`record_v1.json` is the pre-release format 1, kept to test that such records are refused.)
"""
import json, struct, zlib
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

def cmac(key, msg):
    c = CMAC(algorithms.AES(key)); c.update(msg); return c.finalize()

def kdf(master, label, context=b"api-keys/v1"):
    # NIST SP 800-108 counter mode, PRF = AES-CMAC, r = 32, L = 128
    return cmac(master, struct.pack(">I", 1) + label + b"\x00" + context + struct.pack(">I", 128))

def b62(v, width):
    s = ""
    for _ in range(width):
        s = ALPHABET[v % 62] + s; v //= 62
    assert v == 0
    return s

def string(s):
    b = s.encode(); return struct.pack(">I", len(b)) + b

master = bytes(range(16))
version = 7
key_class = "sak"
key_id = 0x0123456789ABCDEF
replaces = 0x0FEDCBA987654321
org, name, created_by = "acme", "prometheus", "alice"
scopes = [(2, None), (3, "billing.read")]  # Prometheus, Custom("billing.read") -- sorted
created_at = 1_700_000_000
expires_at = created_at + 90 * 86400
revoked_at = created_at + 86400
leak_source = "https://example.com/paste/1"
owner = "team-7"
meta = [("plan", "pro"), ("region", "eu")]            # key order
limits = [("burst", 10, 1000, 0), ("daily", 10000, 86_400_000, 1)]  # name, limit, window ms, scope
credits_initial, refill_day, refill_amount = 500, 1, 500
iv = bytes(range(0xF0, 0x100))
secret = bytes(range(0x20, 0x40))

k_enc = kdf(master, b"api-keys/k_enc")
k_mac = kdf(master, b"api-keys/k_mac")
enc = Cipher(algorithms.AES(k_enc), modes.CBC(iv)).encryptor()
ciphertext = enc.update(secret) + enc.finalize()

# The revocation details, under their own tag (bound to format, version, class and id).
details = string("api-keys/record-details") + struct.pack(">H", 2) + struct.pack(">I", version)
details += string(key_class) + struct.pack(">Q", key_id)
details += b"\x00"                                 # revoked_by: None (an automation)
details += b"\x01\x02" + string(leak_source)       # revocation: Some(Leaked { source })
details_tag = cmac(k_mac, details)

def opt8(v):
    # optional timestamps and ids: fixed width, presence byte + 8 bytes (zero when absent)
    return b"\x01" + struct.pack(">q", v) if v is not None else b"\x00" + bytes(8)

canon = string("api-keys/record") + struct.pack(">H", 2) + struct.pack(">I", version)
canon += string(key_class)
canon += struct.pack(">Q", key_id) + string(org) + struct.pack(">I", len(scopes))
for tag, val in scopes:
    canon += bytes([tag]) + (string(val) if val is not None else b"")
canon += struct.pack(">q", created_at) + string(created_by)
canon += opt8(expires_at)                          # expires_at: Some
canon += opt8(revoked_at)                          # revoked_at: Some
canon += details_tag                               # stands for revoked_by and the reason
canon += b"\x01" + struct.pack(">Q", replaces)     # replaces: Some
canon += b"\x00" + bytes(8)                        # replaced_by: None
canon += b"\x01" + string(owner)                   # owner: Some
canon += struct.pack(">I", len(meta))
for k, v in meta:
    canon += string(k) + string(v)
canon += struct.pack(">I", len(limits))
for n, l, w, sc in limits:
    canon += string(n) + struct.pack(">Q", l) + struct.pack(">Q", w) + bytes([sc])
canon += b"\x01" + struct.pack(">Q", credits_initial)   # credits: Some
canon += b"\x02" + bytes([refill_day]) + struct.pack(">Q", refill_amount)  # monthly refill
canon += iv + ciphertext
tag = cmac(k_mac, canon)

body = "sak_" + b62(key_id, 11) + "".join(b62(int.from_bytes(secret[i:i+8], "big"), 11) for i in range(0, 32, 8))
token = body + b62(zlib.crc32(body.encode()), 6)

print(json.dumps({
    "master_key": master.hex(), "key_version": version, "class": key_class, "id": b62(key_id, 11),
    "replaces": b62(replaces, 11), "org": org, "name": name,
    "scopes": ["prometheus", "billing.read"], "created_at": created_at,
    "created_by": created_by, "expires_at": expires_at, "revoked_at": revoked_at,
    "leak_source": leak_source, "owner": owner, "iv": iv.hex(), "secret": secret.hex(),
    "k_enc": k_enc.hex(), "k_mac": k_mac.hex(), "details": details.hex(),
    "details_tag": details_tag.hex(), "canonical": canon.hex(),
    "ciphertext": ciphertext.hex(), "tag": tag.hex(), "token": token,
}, indent=2))

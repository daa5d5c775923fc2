#!/usr/bin/env python3
"""What a HIS/RIS does to open pacsbox for a user without a password in the URL (SPEC E6).

1. ``GET /api/otp`` (no login): a one-time RSA public key (PEM) and its ``key_id``;
2. encrypt ``id=<user>&password=<password>`` (values percent-encoded) with RSA-OAEP, SHA-256
   (hash and MGF1), and base64 the 256-byte ciphertext;
3. either open the user's browser at ``<pacs>/#/list?code=<code>&key_id=<key_id>`` (plus any
   search parameters) — the web application posts the code and removes it from the address
   bar — or, for a script, ``POST /api/otp/login`` with ``{"code", "key_id"}`` and use the
   session cookie it returns.

The key works once and for ``otp_ttl_seconds`` (60 s by default). Examples::

    python scripts/otp_login_example.py http://pacs:8080 his-user 'secret' --open
    python scripts/otp_login_example.py http://pacs:8080 his-user 'secret' --login

Needs ``httpx`` and ``cryptography`` (both come with pacsbox).
"""

from __future__ import annotations

import argparse
import base64
import sys
import webbrowser
from urllib.parse import quote, urlencode

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def one_time_code(base_url: str, user: str, password: str) -> tuple[str, str]:
    """(code, key_id) for one login."""
    r = httpx.get(f"{base_url}/api/otp", timeout=30)
    r.raise_for_status()
    offer = r.json()
    key = serialization.load_pem_public_key(offer["public_key"].encode("ascii"))
    if not isinstance(key, rsa.RSAPublicKey):
        raise SystemExit("the server did not send an RSA key")
    text = f"id={quote(user, safe='')}&password={quote(password, safe='')}"
    ciphertext = key.encrypt(
        text.encode("utf-8"),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    return base64.b64encode(ciphertext).decode("ascii"), offer["key_id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="pacsbox base URL, e.g. http://pacs.example:8080")
    parser.add_argument("user")
    parser.add_argument("password")
    parser.add_argument("--page", default="list", help="list or viewer (default: list)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="search parameter for the page, e.g. patientid=123 (repeatable)",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--open", action="store_true", help="open the link in a browser")
    how.add_argument("--login", action="store_true", help="log in here and show /api/me")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    code, key_id = one_time_code(base, args.user, args.password)
    if args.login:
        with httpx.Client(base_url=base, timeout=30) as client:
            r = client.post("/api/otp/login", json={"code": code, "key_id": key_id})
            if r.status_code != 200:
                print(f"refused: {r.status_code} {r.text}", file=sys.stderr)
                return 1
            print(client.get("/api/me").json())
        return 0
    params = [tuple(p.split("=", 1)) for p in args.param if "=" in p]
    query = urlencode([*params, ("code", code), ("key_id", key_id)])
    link = f"{base}/#/{args.page}?{query}"
    print(link)
    if args.open:
        webbrowser.open(link)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

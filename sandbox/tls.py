"""A throw-away certificate authority for the simulators.

simple-salesforce always builds ``https://`` URLs, so the Salesforce simulator must speak
TLS; the X simulator does too so that connectors exercise the same ``ca_bundle`` path they
use in production. A fresh CA per sandbox means nothing has to be installed system-wide.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


def server_context(workdir: Path) -> tuple[ssl.SSLContext, Path]:
    """Create a CA, a cert for 127.0.0.1/localhost, and write the CA to ``workdir/ca.pem``.

    Returns the server-side context and the CA path clients must pin.
    """
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    workdir.mkdir(parents=True, exist_ok=True)
    ca_path = (workdir / "ca.pem").resolve()
    ca.cert_pem.write_to_path(str(ca_path))
    return context, ca_path

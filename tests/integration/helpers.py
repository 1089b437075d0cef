"""Small writers of Dataverse-like rows for the integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg

from tests.fix_daemons import wait_for


def account(conn: psycopg.Connection, number: str, name: str = "Acme", **kw) -> uuid.UUID:
    aid = kw.pop("accountid", uuid.uuid4())
    conn.execute("INSERT INTO account (accountid, accountnumber, name, address1_country) "
                 "VALUES (%s, %s, %s, %s)", (aid, number, name, kw.get("country", "IE")))
    return aid


def contact(conn: psycopg.Connection, lastname: str, *, accountid: uuid.UUID | None = None,
            medical: str | None = "confidential", implant: str | None = "SN-1",
            country: str = "IE", contactid: uuid.UUID | None = None) -> uuid.UUID:
    cid = contactid or uuid.uuid4()
    conn.execute("""INSERT INTO contact (contactid, accountid, firstname, lastname,
                    emailaddress1, address1_country, medical_notes, implant_serial)
                    VALUES (%s, %s, 'Jo', %s, %s, %s, %s, %s)""",
                 (cid, accountid, lastname, f"{lastname.lower()}@example.com", country, medical,
                  implant))
    return cid


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `regionsync ARGS` as a user would (a separate process)."""
    return subprocess.run([sys.executable, "-m", "sync.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


__all__ = ["account", "cli", "contact", "wait_for"]

"""`make audit`: known vulnerabilities of the venv's packages and of the image's lock, or a plain
statement that nothing could be checked.

pip-audit asks an advisory database about each package: PyPI's per-version JSON API (`-s pypi`) or
OSV (`-s osv`). Where neither can be reached (our build machines: PyPI's per-version API answers
404 behind the package proxy, api.osv.dev does not resolve), pip-audit --strict fails on the first
package, which reads like a finding, and without --strict it would pass having checked nothing.
This script probes both first and runs pip-audit --strict against the first that answers;
when none does it prints NOT AUDITED with each one's reason and exits 0 (or 2 with
AUDIT_REQUIRED=1, for a machine where an audit must happen). Vulnerabilities found exit 1.

    python tools/audit.py [--lock requirements/image.lock]

AUDIT_PYPI_URL / AUDIT_OSV_URL override the probe addresses (tests point them at closed ports).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

PYPI_URL = "https://pypi.org/pypi/pip/24.0/json"
OSV_URL = "https://api.osv.dev/v1/query"
TIMEOUT_S = 10
REPO = Path(__file__).resolve().parents[1]


def probe(service: str, url: str) -> str | None:
    """None when `service`'s advisory database answers at `url` as pip-audit needs, else why not."""
    if service == "osv":
        body = json.dumps({"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "24.0"})
        request = urllib.request.Request(
            url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
    else:
        request = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except urllib.error.URLError as e:
        return f"cannot connect ({e.reason})"
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    if service == "pypi" and "vulnerabilities" not in answer:
        return "answered without vulnerability data"
    return None


def reachable_service() -> tuple[str | None, dict[str, str]]:
    """The first advisory database that answers ('pypi' or 'osv'), and why each other did not."""
    urls = {
        "pypi": os.environ.get("AUDIT_PYPI_URL", PYPI_URL),
        "osv": os.environ.get("AUDIT_OSV_URL", OSV_URL),
    }
    reasons: dict[str, str] = {}
    for service, url in urls.items():
        reason = probe(service, url)
        if reason is None:
            return service, reasons
        reasons[service] = f"{url}: {reason}"
    return None, reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", default=str(REPO / "requirements" / "image.lock"))
    args = parser.parse_args(argv)
    service, reasons = reachable_service()
    if service is None:
        print(
            "make audit: NOT AUDITED: no advisory database could be reached, nothing was checked:"
        )
        for name, reason in reasons.items():
            print(f"  {name}: {reason}")
        print("  Run `make audit` where PyPI's JSON API or api.osv.dev answers.")
        return 2 if os.environ.get("AUDIT_REQUIRED") == "1" else 0
    pip_audit = [sys.executable, "-m", "pip_audit", "--strict", "-s", service]
    pip_audit += ["--progress-spinner", "off"]
    runs = {
        "the venv": [*pip_audit, "--skip-editable"],
        args.lock: [*pip_audit, "--disable-pip", "--require-hashes", "-r", args.lock],
    }
    failed = False
    for what, command in runs.items():
        print(f"make audit: {what} against {service}", flush=True)
        failed |= subprocess.run(command, check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the console's per-run organisation check costs, beside the console run it is part of.

    python bench/console_orgs.py [--orgs 20] [--runs 15] [--postgresql postgresql+psycopg://postgres@127.0.0.1:5432/test]

console_ui.state.enter_org asks core on every run which organisations the person may switch to and checks
their membership in the selected one (organisations_of, require, memberships: a handful of primary-key reads).
Timed on its own (the median of --runs), and a whole console run (the frame and the Status page under
Streamlit's AppTest) timed beside it, on an install with one organisation and on one with --orgs organisations
where the person works in five; the ratio check / run is printed. With --postgresql the same is done in a
private schema of that database, dropped afterwards.
"""
from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamlit.testing.v1 import AppTest  # noqa: E402

from console_ui.state import SESSION_KEY  # noqa: E402
from core.admin.organisations import create_organisation, organisations_of  # noqa: E402
from core.admin.staff import (ConsoleSession, StaffIdentity, assign_staff, create_first_admin,  # noqa: E402
                              create_staff, memberships, require)
from core.db.models import OrganisationBase, StaffCreate  # noqa: E402
from core.db.schemas import PrivateSchema  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from core.settings import ROOT, Settings  # noqa: E402

KEY = base64.b64encode(bytes(range(32))).decode()


def median_ms(step, runs: int) -> float:  # type: ignore[no-untyped-def]
    step()  # warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(url: str, orgs: int, runs: int, cache_seconds: float) -> dict[str, float]:
    rt = Runtime(Settings(database_url=url, env="test", secret_key=KEY, cache_seconds=cache_seconds))
    with rt.session() as db:
        made = create_first_admin(db, username="ada", password="correct horse 1")
    ada = StaffIdentity(made.id, made.username, made.role)
    with rt.session() as db:
        sam = create_staff(db, actor=ada, org_id=1, staff_create=StaffCreate(username="sam", password="password-123",
                                                                             role="editor"))
    for n in range(2, orgs + 1):
        with rt.session() as db:
            org = create_organisation(db, actor=ada, fields=OrganisationBase(slug=f"org-{n}", name=f"Org {n}"))
        if n <= 5:
            with rt.session() as db:
                assign_staff(db, actor=ada, staff_id=sam.id, org_id=org.id, role="viewer")
    rt.configuration_changed()
    person = StaffIdentity(sam.id, sam.username, sam.role)

    def check() -> None:
        with rt.session() as db:
            choices = organisations_of(db, person)
            require(db, person, "status.view", choices[-1].id)
            memberships(db, person.id)

    def console_run() -> None:
        at = AppTest.from_file(str(ROOT / "console.py"), default_timeout=60)
        at.session_state["runtime"] = rt
        at.session_state[SESSION_KEY] = ConsoleSession.start(person, 30)
        at.run()
        assert not at.exception and at.title[0].value == "OTP service status"

    result = {"check_ms": median_ms(check, runs), "run_ms": median_ms(console_run, max(3, runs // 3))}
    rt.db.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--postgresql")
    parser.add_argument("--cache-seconds", type=float, default=0.0,
                        help="OTP_CACHE_SECONDS: 0 reloads the configuration of every organisation on each read")
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; OTP_CACHE_SECONDS={args.cache_seconds:g}")
    print(f"{'database':<11}{'organisations':>14}{'check (ms)':>12}{'console run (ms)':>18}{'check / run':>13}")
    targets = []
    with tempfile.TemporaryDirectory() as tmp:
        for orgs in (1, args.orgs):
            targets.append(("sqlite", orgs, lambda orgs=orgs: f"sqlite:///{tmp}/bench-{orgs}.db"))
        for label, orgs, url in targets:
            figures = measure(url(), orgs, args.runs, args.cache_seconds)
            print(f"{label:<11}{orgs:>14}{figures['check_ms']:>12.2f}{figures['run_ms']:>18.1f}"
                  f"{figures['check_ms'] / figures['run_ms']:>13.3f}")
    if args.postgresql:
        for orgs in (1, args.orgs):
            with PrivateSchema(args.postgresql, prefix="bench_console_orgs") as url:
                figures = measure(url, orgs, args.runs, args.cache_seconds)
            print(f"{'postgresql':<11}{orgs:>14}{figures['check_ms']:>12.2f}{figures['run_ms']:>18.1f}"
                  f"{figures['check_ms'] / figures['run_ms']:>13.3f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

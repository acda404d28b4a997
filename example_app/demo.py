"""``make demo``: migrate the example app's SQLite database, start it, and play a partner
program's story through its real webhook URL with events signed as Stripe signs them.

The demo database (example_app/instance/example.db) is started afresh on each run.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from flask_partnerstack_stripe import testing

from . import DEMO_WEBHOOK_SECRET, INSTANCE

ROOT = Path(__file__).resolve().parents[1]
FLASK = [sys.executable, "-m", "flask", "--app", "example_app"]


class Site:
    """The running example app, seen over HTTP, with a browser's cookie jar."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.browser = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def visit(self, path: str, form: dict[str, str] | None = None) -> int:
        data = urllib.parse.urlencode(form).encode() if form else None
        with self.browser.open(self.base + path, data=data, timeout=30) as response:
            return int(response.status)

    def deliver(self, event: dict[str, Any]) -> str:
        payload = json.dumps(event)
        request = urllib.request.Request(
            self.base + "/partnerstack/webhook",
            data=payload.encode(),
            headers={
                "Stripe-Signature": testing.sign(payload, DEMO_WEBHOOK_SECRET),
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            answer = {"status": f"HTTP {error.code}", "reason": error.read().decode()}
        reason = f" ({answer['reason']})" if answer.get("reason") else ""
        return f"{answer['status']}{reason}"


def partner_link(partner_key: str) -> str:
    return "/?ps_partner_key=" + base64.urlsafe_b64encode(partner_key.encode()).decode()


def play(site: Site) -> None:
    E, C, CH = testing.event, testing.customer, testing.charge

    def step(title: str, event: dict[str, Any]) -> dict[str, Any]:
        print(f"  {title:<62} -> {site.deliver(event)}")
        return event

    print("Signup tracking: a visitor follows partner-alice's link and signs up")
    site.visit(partner_link("partner-alice"))
    site.visit("/signup", {"email": "dana@example.com", "name": "Dana"})
    print("  GET /?ps_partner_key=... then POST /signup                      -> customer user-dana")

    print("Stripe events, signed and posted to /partnerstack/webhook")
    step(
        "customer.created cus_dana (links Stripe to the signup)",
        E(
            "customer.created",
            C("cus_dana", email="dana@example.com", metadata={"customer_key": "user-dana"}),
        ),
    )
    step(
        "customer.created cus_erin, partner-bob",
        E(
            "customer.created",
            C(
                "cus_erin",
                email="erin@example.com",
                metadata={"customer_key": "user-erin", "partner_key": "partner-bob"},
            ),
        ),
    )
    paid = step(
        "charge.succeeded dana 99.00 enterprise",
        E(
            "charge.succeeded",
            CH(
                "ch_dana_1",
                customer="cus_dana",
                amount=9900,
                metadata={"product_key": "enterprise"},
            ),
        ),
    )
    step("same delivery again (Stripe retries)", paid)
    step(
        "charge.succeeded erin 49.00 team",
        E(
            "charge.succeeded",
            CH("ch_erin_1", customer="cus_erin", amount=4900, metadata={"product_key": "team"}),
        ),
    )
    step(
        "charge.succeeded erin 19.00 starter",
        E(
            "charge.succeeded",
            CH("ch_erin_2", customer="cus_erin", amount=1900, metadata={"product_key": "starter"}),
        ),
    )
    step(
        "charge.refunded erin 19.00 (refund deletes it)",
        E(
            "charge.refunded",
            CH(
                "ch_erin_2",
                customer="cus_erin",
                amount=1900,
                amount_refunded=1900,
                metadata={"product_key": "starter"},
            ),
        ),
    )
    step(
        "charge.succeeded frank 49.00, before his customer exists",
        E(
            "charge.succeeded",
            CH("ch_frank_1", customer="cus_frank", amount=4900, metadata={"product_key": "team"}),
        ),
    )
    step(
        "customer.created cus_frank, partner-alice (charge attached)",
        E(
            "customer.created",
            C("cus_frank", metadata={"customer_key": "user-frank", "partner_key": "partner-alice"}),
        ),
    )
    step(
        "charge.succeeded shop order, partner-carol in metadata",
        E(
            "charge.succeeded",
            CH(
                "ch_shop_1",
                amount=2500,
                email="gus@example.com",
                metadata={
                    "customer_key": "order-1001",
                    "partner_key": "partner-carol",
                    "product_key": "starter",
                },
            ),
        ),
    )
    step(
        "charge.updated dana (an old event, changes nothing)",
        E(
            "charge.updated",
            CH(
                "ch_dana_1",
                customer="cus_dana",
                amount=9900,
                metadata={"product_key": "enterprise"},
            ),
        ),
    )
    step(
        "refund.created dana 30.00 (the refund object; deletes it)",
        E("refund.created", testing.refund("re_dana_1", charge="ch_dana_1", amount=3000)),
    )
    step(
        "refund.failed the same refund (gives the payment back)",
        E(
            "refund.failed",
            testing.refund("re_dana_1", charge="ch_dana_1", amount=3000, status="failed"),
        ),
    )
    step(
        "charge.dispute.created erin 49.00 (it stands while open)",
        E("charge.dispute.created", testing.dispute("dp_erin_1", charge="ch_erin_1", amount=4900)),
    )
    step(
        "charge.dispute.closed erin 49.00 lost (deletes it)",
        E(
            "charge.dispute.closed",
            testing.dispute("dp_erin_1", charge="ch_erin_1", amount=4900, status="lost"),
        ),
    )
    step(
        "invoice.paid (charge mode: payments come from charges)",
        E("invoice.paid", testing.invoice("in_1", customer="cus_dana", subtotal=9900)),
    )


def print_report() -> None:
    from . import create_app
    from .views import partner_report

    app = create_app()
    with app.app_context():
        report = partner_report()
        print()
        print(
            f"{'partner':<16}{'customers':>10}{'transactions':>14}{'revenue':>12}{'commission':>12}"
        )
        for row in report:
            standing = [t for t in row.transactions if t.deleted_at is None]
            revenue, commission = sum(row.revenue.values()), sum(row.commission.values())
            print(
                f"{row.partner_key:<16}{len(row.customers):>10}{len(standing):>14}"
                f"{revenue / 100:>12.2f}{commission / 100:>12.2f}"
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    """A Celery worker for the example app, on the broker and queue ``env`` names."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "example_app.worker", "worker", "--pool", "solo",
         "-Q", env["EXAMPLE_APP_CELERY_QUEUE"], "--without-heartbeat", "--without-gossip",
         "--without-mingle", "-l", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    print(f"Celery worker started on {env['EXAMPLE_APP_CELERY_BROKER']}, queue "
          f"{env['EXAMPLE_APP_CELERY_QUEUE']}\n")  # fmt: skip
    return worker


def wait_for_the_worker(timeout: float = 60) -> None:
    """Until no event is left received: the worker has applied everything posted."""
    import sqlalchemy as sa

    from . import create_app, db, partnerstack

    app = create_app()
    with app.app_context():
        WebhookEvent = partnerstack.models.WebhookEvent
        session = db.session
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = session.scalar(
                sa.select(sa.func.count()).where(WebhookEvent.status == "received")
            )
            session.rollback()
            if not left:
                return
            time.sleep(0.2)
    raise SystemExit("The Celery worker did not apply every event in time.")


def main() -> int:
    celery = "--celery" in sys.argv[1:]
    database = INSTANCE / "example.db"
    INSTANCE.mkdir(exist_ok=True)
    database.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    worker = None
    if celery:
        env.setdefault("EXAMPLE_APP_CELERY_BROKER", "redis://127.0.0.1:6379/0")
        env["EXAMPLE_APP_CELERY_QUEUE"] = f"example-app-demo-{os.getpid()}"
        os.environ.update(env)  # this process reads the database in the same mode
    print(f"Migrating {database} (flask db upgrade)")
    subprocess.run([*FLASK, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    if celery:
        worker = start_worker(env)

    port = free_port()
    server = subprocess.Popen(
        [*FLASK, "run", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    print(server.stderr.read() if server.stderr else "", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        print(f"Example app started at {base}\n")
        play(Site(base))
        print(
            "\nThe CLI's seed scenario (a charge's life, a subscription renewal retried after "
            "a decline, a lost dispute), over the same URL:"
        )
        print("  flask partnerstack send-test-event --scenario seed --url .../partnerstack/webhook")
        webhook = base + "/partnerstack/webhook"
        seed = [*FLASK, "partnerstack", "send-test-event", "--scenario", "seed",
                "--product-key", "team", "--amount", "4900", "--url", webhook, "--yes"]  # fmt: skip
        output = subprocess.run(seed, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        print("\n".join("  " + line for line in output.stdout.splitlines()))
        if worker is not None:
            wait_for_the_worker()
            print("\nThe Celery worker applied every queued event.")
    finally:
        server.terminate()
        server.wait(timeout=10)
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=15)
    print_report()
    print("\nThe extension's commissions (flask partnerstack commissions approve, then list):")
    for command in (["approve"], ["list"]):
        output = subprocess.run([*FLASK, "partnerstack", "commissions", *command], cwd=ROOT,
                                env=env, check=True, capture_output=True, text=True)  # fmt: skip
        print("\n".join("  " + line for line in output.stdout.splitlines()))
    print("  (pay them with `flask partnerstack payouts export`, or from the payouts page)")
    print(
        "\nDone. Keep the app running with `make serve`, then open "
        "http://127.0.0.1:5000/partners, /payouts (and / for the signup page)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

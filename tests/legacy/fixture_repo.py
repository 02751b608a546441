"""A git repository with planted secrets and look-alikes, built fresh for each test run.

The planted values are random at build time (nothing secret-shaped is committed to this
project), spread over code, config, CI definitions, container and Kubernetes files and
history-only (deleted) files. ``Planted`` lists what a scan must find; every other finding
is a false positive.
"""

from __future__ import annotations

import base64
import os
import random
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jwt

from tether.legacy.engine import fingerprint


@dataclass(frozen=True)
class Planted:
    kind: str
    value: str
    path: str
    live: bool

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)


def _rand(
    n: int, alphabet: str = string.ascii_letters + string.digits, rng: random.Random | None = None
) -> str:
    r = rng or random.SystemRandom()
    return "".join(r.choice(alphabet) for _ in range(n))


def git(repo: Path, *args: str, when: int | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
           "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.org"}  # fmt: skip
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"{when} +0000"
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return r.stdout.strip()


def write(repo: Path, rel: str, text: str) -> None:
    p = repo / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def build(repo: Path, extra_commits: int = 0) -> list[Planted]:
    """Create the repository at ``repo``; returns the planted secrets."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    up = string.ascii_uppercase + string.digits
    aws = "AKIA" + _rand(16, up)
    ghp = "ghp_" + _rand(36)
    slack = f"xoxb-{_rand(12, string.digits)}-{_rand(13, string.digits)}-{_rand(24)}"
    stripe = "sk_live_" + _rand(24)
    pg = _rand(14)
    glpat = "glpat-" + _rand(20)
    openai = "sk-" + _rand(20) + "T3BlbkFJ" + _rand(20)
    token = jwt.encode({"sub": "svc-" + _rand(6), "iat": 1700000000}, _rand(32), algorithm="HS256")
    prop_pw = _rand(18)
    k8s_pw = _rand(20)
    tickets_key = _rand(32, string.ascii_lowercase + string.digits)
    sendgrid = f"SG.{_rand(22)}.{_rand(43)}"
    npm = "npm_" + _rand(36)
    pem_body = "\n".join(base64.b64encode(os.urandom(48)).decode() for _ in range(6))
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----\n"
    sha = "".join(random.choice("0123456789abcdef") for _ in range(40))
    digest = "".join(random.choice("0123456789abcdef") for _ in range(64))
    t0 = 1_600_000_000  # 2020-09-13: the oldest secret is years old

    # commit 1: things that were removed later (history only)
    write(repo, "deploy/id_rsa", pem)
    write(repo, ".npmrc", f"//registry.npmjs.org/:_authToken={npm}\n")
    write(repo, "scripts/mail.py", f'SENDGRID_API_KEY = "{sendgrid}"\n')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial deploy scripts", when=t0)
    # commit 2: the live tree
    write(repo, "src/settings.py",
          f'AWS_ACCESS_KEY_ID = "{aws}"\nDB_PASSWORD = os.environ["DB_PASSWORD"]\n'
          'EXAMPLE_KEY = "AKIAIOSFODNN7EXAMPLE"\n'
          'REQUEST_ID = "123e4567-e89b-12d3-a456-426614174000"\n')  # fmt: skip
    write(repo, ".github/workflows/ci.yml",
          "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    env:\n"
          f"      GH_TOKEN: {ghp}\n      DEPLOY_TOKEN: ${{{{ secrets.DEPLOY_TOKEN }}}}\n"
          f"    steps:\n      - uses: actions/checkout@{sha}\n")  # fmt: skip
    write(repo, "config/app.yaml",
          f"slack:\n  bot_token: {slack}\n  channel: support\n"
          "api_key: changeme\npassword: ${DB_PASSWORD}\n")  # fmt: skip
    write(repo, ".env", f"STRIPE_SECRET_KEY={stripe}\nDEBUG=true\n")
    write(repo, "docker-compose.yml",
          "services:\n  app:\n    environment:\n"
          f"      DATABASE_URL: postgresql://app:{pg}@db:5432/app\n"
          "      REPLICA_URL: postgresql://reader@db:5432/app\n"
          f"    image: app@sha256:{digest}\n")  # fmt: skip
    write(
        repo,
        "Jenkinsfile",
        f"pipeline {{\n  environment {{\n    OPENAI_API_KEY = '{openai}'\n    NAME = 'build'\n  }}\n}}\n",
    )
    write(repo, ".gitlab-ci.yml", f"variables:\n  GITLAB_TOKEN: {glpat}\n  COMMIT: {sha}\n")
    write(
        repo,
        "k8s/configmap.yaml",
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  session_jwt: {token}\n",
    )
    write(repo, "k8s/secret.yaml",
          "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n"
          f"  password: {k8s_pw}\n")  # fmt: skip
    write(repo, "app.properties", f"db.user=app\ndb.password={prop_pw}\n")
    write(repo, "Dockerfile",
          "FROM python:3.12\n"
          f"ENV TICKETS_URL=https://tickets.corp.test/v1/queue?api_key={tickets_key}\n")  # fmt: skip
    write(
        repo, "README.md", "Set `password: <your password>` in config; see https://tickets.corp.test/docs.\n"
    )
    write(repo, "logo.png", "")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + os.urandom(256))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app config", when=t0 + 86400 * 30)
    # commit 3: the "cleanup" that only deleted the files
    for rel in ("deploy/id_rsa", ".npmrc", "scripts/mail.py"):
        git(repo, "rm", "-q", rel)
    git(repo, "commit", "-q", "-m", "remove old deploy scripts", when=t0 + 86400 * 60)
    for i in range(extra_commits):  # history volume for speed figures
        write(repo, f"src/mod{i % 50}.py", f"VALUE_{i} = {i}\ndef f{i}():\n    return 'ok {i}'\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"change {i}", when=t0 + 86400 * 61 + i)

    return [
        Planted("AWS Access Key", aws, "src/settings.py", True),
        Planted("GitHub Token", ghp, ".github/workflows/ci.yml", True),
        Planted("Slack Token", slack, "config/app.yaml", True),
        Planted("Stripe Access Key", stripe, ".env", True),
        Planted("PostgreSQL Password", pg, "docker-compose.yml", True),
        Planted("OpenAI Token", openai, "Jenkinsfile", True),
        Planted("GitLab Token", glpat, ".gitlab-ci.yml", True),
        Planted("JSON Web Token", token, "k8s/configmap.yaml", True),
        Planted("Secret Keyword", k8s_pw, "k8s/secret.yaml", True),
        Planted("Secret Keyword", prop_pw, "app.properties", True),
        Planted("Service URL Credential", tickets_key, "Dockerfile", True),
        Planted("Private Key", pem.strip(), "deploy/id_rsa", False),
        Planted("NPM tokens", npm, ".npmrc", False),
        Planted("SendGrid API Key", sendgrid, "scripts/mail.py", False),
    ]

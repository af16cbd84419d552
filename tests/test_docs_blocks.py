"""Every ```python block of README.md and docs/*.md runs against a sandbox, as a reader runs it.

Each block is run in a child process, the way its text implies: a whole script as it is; a
fragment using top-level ``await`` inside an async function after a stated prelude (the names it
takes from the surrounding text, such as ``vast`` or ``config``); a test as a pytest file. The
settings come from ``VASTAI_*`` variables pointing at the fixture's sandbox, as for a real
account. A block without an entry in ``HARNESS`` fails the suite: a new example must be run too.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

from vastai_async.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Read at import: the test-wide fixture clears ``VASTAI_*`` variables before each test.
REDIS_URL = os.environ.get("VASTAI_TEST_REDIS_URL")
_BLOCK = re.compile(r"^(?P<indent> *)```python\n(?P<body>.*?)^(?P=indent)``` *$", re.M | re.S)
#: Wall seconds a block may take (it rents and tears down on a sandbox with unscaled timings).
BLOCK_DEADLINE_S = 120.0

pytestmark = [pytest.mark.slow, pytest.mark.vastai_sandbox(offers=30, time_scale=0.02, seed=2)]


@attrs.frozen(kw_only=True)
class Harness:
    """How one block runs.

    Attributes:
        kind: ``script`` (as written), ``async`` (inside ``async def`` after the prelude) or
            ``pytest`` (a test file with asyncio auto mode).
        prelude: what the surrounding text supplies (imports, ``vast``, ``config`` ...).
        postlude: cleanup the text leaves to the reader (e.g. destroying a rental it keeps).
        sandbox_env: ``VASTAI_*`` variables point at the fixture's sandbox (else none is set).
        replace: ``(old, new)`` substitutions that shrink a production-sized example
            (500 jobs -> 3) or point it at local services.
        ignore_warnings: ``-W`` filters for third-party warnings (all others are errors).
    """

    kind: str
    prelude: str = ""
    postlude: str = ""
    sandbox_env: bool = True
    replace: tuple[tuple[str, str], ...] = ()
    ignore_warnings: tuple[str, ...] = ()


SERVICE = """
from vastai_async import VastAIService, get_vastai_config
config = get_vastai_config()
vast = await VastAIService(config=config).__aenter__()
"""
CLOSE_SERVICE = "await vast.close()"

SANDBOX_CONTROLS = """
import time
import aiohttp
from vastai_async.sandbox import Sandbox
sb = await Sandbox(seed=1, offers=20, time_scale=0.01).__aenter__()
headers = {"Authorization": f"Bearer {sb.api_key}"}
async with aiohttp.ClientSession() as http:
    query = {"num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]], "type": "bid"}
    async with http.post(f"{sb.url}/api/v0/bundles/", json=query) as r:
        bids = (await r.json())["offers"]
    bid, on_demand, other = bids[0], bids[1], bids[2]
    ids = []
    for offer, price in ((bid, bid["dph_total"] * 2), (on_demand, None)):
        body = {"image": "ubuntu:22.04", "label": "doc", "price": price}
        url = f"{sb.url}/api/v0/asks/{offer['id']}/"
        async with http.put(url, json=body, headers=headers) as r:
            ids.append((await r.json())["new_contract"])
interruptible_id, instance_id = ids
for i in ids:
    await sb.wait_status(i, "running")
offer_id, machine_id = other["id"], other["machine_id"]
offer_or_machine_id = offer_id
"""

HARNESS: dict[str, Harness] = {
    "README.md#1": Harness(
        kind="async",
        prelude="from vastai_async import VastAIService, get_vastai_config",
    ),
    "README.md#2": Harness(kind="script"),
    "README.md#3": Harness(kind="pytest", sandbox_env=False),
    "configuration.md#1": Harness(kind="script"),
    "configuration.md#2": Harness(
        kind="script",
        prelude="from vastai_async.config import get_vastai_config",
        sandbox_env=False,  # the block shows the errors of a missing configuration
    ),
    "errors-and-retries.md#1": Harness(kind="async", prelude=SERVICE, postlude=CLOSE_SERVICE),
    "getting-started.md#1": Harness(kind="script", sandbox_env=False),
    "getting-started.md#2": Harness(kind="script"),
    "hosts.md#1": Harness(
        kind="async",
        prelude=SERVICE,
        postlude="await rental.terminate()\n" + CLOSE_SERVICE,
    ),
    "index.md#1": Harness(kind="script"),
    "provisioning.md#1": Harness(kind="async"),
    "provisioning.md#2": Harness(
        kind="script",
        # The block defines the coroutine; the harness runs it against the sandbox.
        postlude=(
            "import asyncio\nfrom vastai_async import get_vastai_config\n"
            "asyncio.run(many_jobs(get_vastai_config()))"
        ),
    ),
    "provisioning.md#3": Harness(kind="async", prelude=SERVICE, postlude=CLOSE_SERVICE),
    "provisioning.md#4": Harness(
        kind="async",
        prelude=SERVICE,
        postlude="await rental.terminate()\n" + CLOSE_SERVICE,
    ),
    "sandbox.md#1": Harness(kind="pytest", sandbox_env=False),
    "sandbox.md#2": Harness(kind="pytest", sandbox_env=False),
    "sandbox.md#3": Harness(kind="pytest", sandbox_env=False),
    "sandbox.md#4": Harness(
        kind="async",
        prelude=SANDBOX_CONTROLS,
        postlude="await sb.__aexit__(None, None, None)",
        sandbox_env=False,
    ),
    "scale.md#1": Harness(kind="async", replace=(("range(500)", "range(3)"),)),
    "scale.md#2": Harness(
        kind="script",
        replace=(
            ('RedisSettings(host="redis.internal")', "RedisSettings.from_dsn(REDIS_URL)"),
            ("max_jobs=10,", "max_jobs=10, burst=True,"),
        ),
        prelude="import os\nREDIS_URL = os.environ['VASTAI_TEST_REDIS_URL']",
        # arq 0.26 closes its redis pool with redis-py's deprecated close().
        ignore_warnings=("ignore:Call to deprecated close:DeprecationWarning",),
    ),
}


def doc_blocks() -> dict[str, str]:
    """``file#n`` (1-based, per file) -> the block's code, dedented."""
    blocks: dict[str, str] = {}
    for path in DOCS:
        for n, match in enumerate(_BLOCK.finditer(path.read_text()), start=1):
            body = textwrap.dedent(match["body"]) if match["indent"] else match["body"]
            blocks[f"{path.name}#{n}"] = body
    return blocks


def program(block: str, harness: Harness) -> str:
    """The program that runs ``block`` under ``harness``."""
    for old, new in harness.replace:
        assert old in block, f"substitution {old!r} no longer matches the block"
        block = block.replace(old, new)
    if harness.kind == "async":
        body = "\n".join([harness.prelude, block, harness.postlude])
        return (
            "import asyncio\n\n\nasync def _block() -> None:\n"
            + textwrap.indent(body, "    ")
            + "\n\nasyncio.run(_block())\n"
        )
    return "\n".join([harness.prelude, block, harness.postlude])


PYTEST_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
filterwarnings = error
"""


def test_every_python_block_in_readme_and_docs_has_a_harness() -> None:
    assert set(doc_blocks()) == set(HARNESS)


@pytest.mark.parametrize("block_id", sorted(HARNESS))
async def test_docs_block_runs(
    block_id: str, vastai_sandbox: Sandbox, vastai_ssh_key: Path, tmp_path: Path
) -> None:
    harness = HARNESS[block_id]
    code = doc_blocks()[block_id]
    if "arq" in code and not REDIS_URL:
        pytest.skip("needs Redis: set VASTAI_TEST_REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTAI_")}
    env |= {"VASTAI_STATE_DIR": str(tmp_path / "state"), "PYTHONDONTWRITEBYTECODE": "1"}
    if REDIS_URL:
        env["VASTAI_TEST_REDIS_URL"] = REDIS_URL
    if harness.sandbox_env:
        env |= {
            "VASTAI_API_KEY": vastai_sandbox.api_key,
            "VASTAI_API_BASE_URL": vastai_sandbox.url,
            "VASTAI_SSH_KEY_PATH": str(vastai_ssh_key),
            "VASTAI_MIN_VRAM_GB": "0",
            "VASTAI_PREFERRED_GPUS": "",
            "VASTAI_MAX_BID_PER_HOUR": "50",
        }
    work = tmp_path / "work"
    work.mkdir()
    if harness.kind == "pytest":
        (work / "test_doc_block.py").write_text(code)
        (work / "pytest.ini").write_text(PYTEST_INI)
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_doc_block.py"]
    else:
        (work / "block.py").write_text(program(code, harness))
        filters = [arg for f in harness.ignore_warnings for arg in ("-W", f)]
        argv = [sys.executable, "-W", "error", *filters, "block.py"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=work,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(BLOCK_DEADLINE_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = f"stdout:\n{out.decode()}\nstderr:\n{err.decode()}"
    assert proc.returncode == 0, text
    if harness.kind == "pytest":
        assert " passed" in out.decode(), text
    if harness.sandbox_env:
        # Whatever the block rented, it (or its stated cleanup) gave back.
        assert vastai_sandbox.alive_instance_ids() == set(), text

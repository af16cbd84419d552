"""get_vastai_config: sources, precedence, validation (all problems at once), keys, secrets."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path
from typing import Any

import asyncssh
import attrs
import pytest

from vastai_async.config import (
    DEFAULT_API_BASE_URL,
    VastAIConfig,
    default_owner,
    generate_ssh_keypair,
    get_vastai_config,
)
from vastai_async.errors import ConfigError
from vastai_async.pacing import Pacing
from vastai_async.timings import Timings

API_KEY = "sk-test-0123456789abcdef"
PASSPHRASE = "correct horse battery staple"
OWNER_RE = re.compile(r"[A-Za-z0-9._-]+-\d+-[0-9a-f]{6}")


def write_key(path: Path, *, passphrase: str | None = None, mode: int = 0o600) -> str:
    """Write an ed25519 key (PKCS#8 when encrypted: needs no bcrypt); return its public line."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    if passphrase is None:
        key.write_private_key(path)
    else:
        key.write_private_key(path, "pkcs8-pem", passphrase=passphrase)
    path.chmod(mode)
    return str(key.export_public_key("openssh").decode().strip())


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "id_ed25519"
    return path, write_key(path)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, key_file: tuple[Path, str]) -> pytest.MonkeyPatch:
    """The two required variables set to valid values."""
    monkeypatch.setenv("VASTAI_API_KEY", API_KEY)
    monkeypatch.setenv("VASTAI_SSH_KEY_PATH", str(key_file[0]))
    return monkeypatch


def problems_of(**kwargs: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        get_vastai_config(**kwargs)
    names = [name for name, _ in info.value.problems]
    assert len(names) == len(set(names)), "one entry per variable"
    return dict(info.value.problems)


# --- defaults and valid values ---


def test_defaults_apply_when_only_required_variables_are_set(
    env: pytest.MonkeyPatch, key_file: tuple[Path, str]
) -> None:
    env.delenv("VASTAI_STATE_DIR")
    env.setenv("XDG_STATE_HOME", "/xdg/state")
    cfg = get_vastai_config()
    assert cfg.api_key == API_KEY
    assert cfg.api_base_url == DEFAULT_API_BASE_URL == "https://console.vast.ai/api/v0"
    assert cfg.ssh_key_path == key_file[0]
    assert cfg.ssh_key_passphrase is None
    assert cfg.ssh_public_key == key_file[1]
    assert cfg.preferred_gpus == ("4090", "A100")
    assert cfg.template_ids == ()
    assert cfg.max_bid_usd_per_hour == 4.5
    assert cfg.min_vram_gb == 24
    assert cfg.default_disk_gb == 64
    assert cfg.default_image == "vastai/base-image:@vastai-automatic-tag"
    assert OWNER_RE.fullmatch(cfg.owner)
    assert cfg.state_dir == Path("/xdg/state/vastai-async")
    assert cfg.allow_insecure_key is False
    assert cfg.timings == Timings()
    assert cfg.pacing == Pacing()


@pytest.mark.parametrize(
    ("variable", "raw", "attribute", "expected"),
    [
        ("VASTAI_API_KEY", "other-key", "api_key", "other-key"),
        ("VASTAI_API_BASE_URL", "http://sandbox:8000", "api_base_url", "http://sandbox:8000"),
        (
            "VASTAI_API_BASE_URL",
            "http://127.0.0.1:41234/",
            "api_base_url",
            "http://127.0.0.1:41234",
        ),
        (
            "VASTAI_API_BASE_URL",
            "https://x.example/api/v0",
            "api_base_url",
            "https://x.example/api/v0",
        ),
        ("VASTAI_PREFERRED_GPUS", "H100, RTX 4090 ,", "preferred_gpus", ("H100", "RTX 4090")),
        ("VASTAI_PREFERRED_GPUS", "", "preferred_gpus", ()),
        ("VASTAI_TEMPLATE_IDS", "12,abc", "template_ids", ("12", "abc")),
        ("VASTAI_MAX_BID_PER_HOUR", "0.35", "max_bid_usd_per_hour", 0.35),
        ("VASTAI_MIN_VRAM_GB", "0", "min_vram_gb", 0.0),
        ("VASTAI_MIN_VRAM_GB", "80", "min_vram_gb", 80.0),
        ("VASTAI_DEFAULT_DISK_GB", "200", "default_disk_gb", 200.0),
        (
            "VASTAI_DEFAULT_IMAGE",
            "pytorch/pytorch:latest",
            "default_image",
            "pytorch/pytorch:latest",
        ),
        ("VASTAI_OWNER", "worker-1.eu_2", "owner", "worker-1.eu_2"),
        ("VASTAI_OWNER", "a" * 64, "owner", "a" * 64),
        ("VASTAI_STATE_DIR", "/srv/vast-state", "state_dir", Path("/srv/vast-state")),
        ("VASTAI_ALLOW_INSECURE_KEY", "true", "allow_insecure_key", True),
        ("VASTAI_ALLOW_INSECURE_KEY", "0", "allow_insecure_key", False),
    ],
)
def test_valid_variable_sets_its_field(
    env: pytest.MonkeyPatch, variable: str, raw: str, attribute: str, expected: object
) -> None:
    env.setenv(variable, raw)
    assert getattr(get_vastai_config(), attribute) == expected


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("VASTAI_LOADING_TIMEOUT_S", "90", "loading_s", 90.0),
        ("VASTAI_SSH_TIMEOUT_S", "12.5", "ssh_s", 12.5),
    ],
)
def test_timeout_variable_refines_default_timings(
    env: pytest.MonkeyPatch, variable: str, raw: str, field: str, expected: float
) -> None:
    env.setenv(variable, raw)
    got = get_vastai_config().timings
    assert getattr(got, field) == expected
    assert got.overall_s == Timings().overall_s


@pytest.mark.parametrize(
    "variable",
    [
        "VASTAI_SSH_KEY_PASSPHRASE",
        "VASTAI_API_BASE_URL",
        "VASTAI_MAX_BID_PER_HOUR",
        "VASTAI_DEFAULT_IMAGE",
        "VASTAI_OWNER",
        "VASTAI_STATE_DIR",
        "VASTAI_SSH_TIMEOUT_S",
        "VASTAI_ALLOW_INSECURE_KEY",
    ],
)
def test_empty_optional_variable_means_its_default(env: pytest.MonkeyPatch, variable: str) -> None:
    env.delenv("VASTAI_STATE_DIR")
    baseline = get_vastai_config(owner="fixed")
    env.setenv(variable, "  ")
    got = get_vastai_config(owner="fixed") if variable != "VASTAI_OWNER" else get_vastai_config()
    if variable == "VASTAI_OWNER":
        assert OWNER_RE.fullmatch(got.owner)
        got = attrs.evolve(got, owner="fixed")
    assert got == baseline


def test_state_dir_default_without_xdg_is_home_local_state_and_not_created(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.delenv("VASTAI_STATE_DIR")
    env.delenv("XDG_STATE_HOME", raising=False)
    env.setenv("HOME", str(tmp_path / "home"))
    cfg = get_vastai_config()
    assert cfg.state_dir == tmp_path / "home" / ".local" / "state" / "vastai-async"
    assert not cfg.state_dir.exists()


def test_relative_xdg_state_home_is_ignored(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The XDG spec says relative values are invalid."""
    env.delenv("VASTAI_STATE_DIR")
    env.setenv("XDG_STATE_HOME", "relative/state")
    env.setenv("HOME", str(tmp_path))
    assert get_vastai_config().state_dir == tmp_path / ".local" / "state" / "vastai-async"


# --- invalid values ---


@pytest.mark.parametrize(
    ("variable", "raw", "reason"),
    [
        ("VASTAI_API_KEY", "   ", "missing"),
        ("VASTAI_API_BASE_URL", "ftp://console.vast.ai", "not an http(s) URL"),
        ("VASTAI_API_BASE_URL", "console.vast.ai/api/v0", "not an http(s) URL"),
        ("VASTAI_API_BASE_URL", "http://", "not an http(s) URL"),
        ("VASTAI_API_BASE_URL", "https://h:99999/", "not a valid URL"),
        ("VASTAI_SSH_KEY_PATH", "", "missing"),
        ("VASTAI_MAX_BID_PER_HOUR", "cheap", "not a number"),
        ("VASTAI_MAX_BID_PER_HOUR", "0", "must be > 0"),
        ("VASTAI_MAX_BID_PER_HOUR", "-1", "must be > 0"),
        ("VASTAI_MAX_BID_PER_HOUR", "inf", "finite"),
        ("VASTAI_MIN_VRAM_GB", "-0.5", "must be >= 0"),
        ("VASTAI_MIN_VRAM_GB", "24GB", "not a number"),
        ("VASTAI_DEFAULT_DISK_GB", "0", "must be > 0"),
        ("VASTAI_DEFAULT_DISK_GB", "nan", "finite"),
        ("VASTAI_OWNER", "me:you", "[A-Za-z0-9._-]"),
        ("VASTAI_OWNER", "a" * 65, "64"),
        ("VASTAI_LOADING_TIMEOUT_S", "0", "must be > 0"),
        ("VASTAI_SSH_TIMEOUT_S", "soon", "not a number"),
        ("VASTAI_ALLOW_INSECURE_KEY", "maybe", "not a boolean"),
    ],
)
def test_invalid_variable_is_named_with_its_reason(
    env: pytest.MonkeyPatch, variable: str, raw: str, reason: str
) -> None:
    env.setenv(variable, raw)
    problems = problems_of()
    assert list(problems) == [variable]
    assert reason in problems[variable]


@pytest.mark.parametrize("variable", ["VASTAI_API_KEY", "VASTAI_SSH_KEY_PATH"])
def test_required_variable_unset_is_reported_missing(
    env: pytest.MonkeyPatch, variable: str
) -> None:
    env.delenv(variable)
    assert problems_of() == {variable: "missing (required)"}


@pytest.mark.parametrize(
    ("kwarg", "value", "variable", "reason"),
    [
        ("api_key", "", "VASTAI_API_KEY", "missing"),
        ("api_base_url", "sandbox:8000", "VASTAI_API_BASE_URL", "http(s)"),
        ("max_bid_usd_per_hour", 0.0, "VASTAI_MAX_BID_PER_HOUR", "> 0"),
        ("max_bid_usd_per_hour", "3", "VASTAI_MAX_BID_PER_HOUR", "not a number"),
        ("min_vram_gb", -1, "VASTAI_MIN_VRAM_GB", ">= 0"),
        ("default_disk_gb", float("inf"), "VASTAI_DEFAULT_DISK_GB", "finite"),
        ("default_image", "", "VASTAI_DEFAULT_IMAGE", "missing"),
        ("owner", "x/y", "VASTAI_OWNER", "[A-Za-z0-9._-]"),
        ("loading_timeout_s", -5, "VASTAI_LOADING_TIMEOUT_S", "> 0"),
        ("ssh_timeout_s", True, "VASTAI_SSH_TIMEOUT_S", "not a number"),
        ("allow_insecure_key", "yes", "VASTAI_ALLOW_INSECURE_KEY", "true or false"),
        ("ssh_key_path", 42, "VASTAI_SSH_KEY_PATH", "path"),
    ],
)
def test_invalid_keyword_argument_is_named_by_its_variable(
    env: pytest.MonkeyPatch, kwarg: str, value: object, variable: str, reason: str
) -> None:
    problems = problems_of(**{kwarg: value})
    assert list(problems) == [variable]
    assert reason in problems[variable]


def test_every_problem_is_reported_in_one_error(env: pytest.MonkeyPatch) -> None:
    env.setenv("VASTAI_MAX_BID_PER_HOUR", "free")
    env.setenv("VASTAI_API_BASE_URL", "gopher://vast")
    env.setenv("VASTAI_OWNER", "bad owner")
    problems = problems_of()
    assert set(problems) == {"VASTAI_MAX_BID_PER_HOUR", "VASTAI_API_BASE_URL", "VASTAI_OWNER"}


def test_every_problem_includes_missing_required_and_key_problems(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Env problems, key-file problems and keyword problems all come out together."""
    monkeypatch.setenv("VASTAI_SSH_KEY_PATH", str(tmp_path / "nope"))
    monkeypatch.setenv("VASTAI_MIN_VRAM_GB", "-3")
    problems = problems_of(default_disk_gb=-1.0)
    assert list(problems) == [
        "VASTAI_API_KEY",
        "VASTAI_SSH_KEY_PATH",
        "VASTAI_MIN_VRAM_GB",
        "VASTAI_DEFAULT_DISK_GB",
    ]


def test_unknown_vastai_variables_are_ignored(env: pytest.MonkeyPatch) -> None:
    env.setenv("VASTAI_NO_UPDATE_CHECK", "1")
    env.setenv("VASTAI_SOMETHING_ELSE", "not a number at all")
    assert get_vastai_config().api_key == API_KEY


# --- precedence and files ---


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ({}, 4.5),
        ({"file": "1.5"}, 1.5),
        ({"file": "1.5", "env": "2.5"}, 2.5),
        ({"file": "1.5", "env": "2.5", "arg": 3.5}, 3.5),
        ({"env": "2.5", "arg": 3.5}, 3.5),
        ({"file": "1.5", "arg": 3.5}, 3.5),
    ],
)
def test_precedence_argument_over_environment_over_env_file_over_default(
    env: pytest.MonkeyPatch, sources: dict[str, Any], expected: float
) -> None:
    if "file" in sources:
        Path(".env.local.vastai").write_text(f"VASTAI_MAX_BID_PER_HOUR={sources['file']}\n")
    if "env" in sources:
        env.setenv("VASTAI_MAX_BID_PER_HOUR", sources["env"])
    kwargs = {"max_bid_usd_per_hour": sources["arg"]} if "arg" in sources else {}
    assert get_vastai_config(**kwargs).max_bid_usd_per_hour == expected


def test_argument_hides_an_invalid_environment_value(env: pytest.MonkeyPatch) -> None:
    """A variable overridden by its argument is not read, so its bad value is no error."""
    env.setenv("VASTAI_MAX_BID_PER_HOUR", "garbage")
    assert get_vastai_config(max_bid_usd_per_hour=3.5).max_bid_usd_per_hour == 3.5


def test_env_file_alone_can_supply_everything(
    monkeypatch: pytest.MonkeyPatch, key_file: tuple[Path, str]
) -> None:
    Path(".env.local.vastai").write_text(
        f"VASTAI_API_KEY={API_KEY}\nVASTAI_SSH_KEY_PATH={key_file[0]}\n"
        'VASTAI_PREFERRED_GPUS="H100,A100"\n'
    )
    cfg = get_vastai_config()
    assert (cfg.api_key, cfg.preferred_gpus) == (API_KEY, ("H100", "A100"))
    assert "VASTAI_API_KEY" not in os.environ, "the env file must not leak into os.environ"


def test_env_file_does_not_leak_into_a_later_call(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    Path(".env.local.vastai").write_text("VASTAI_MIN_VRAM_GB=48\n")
    assert get_vastai_config().min_vram_gb == 48
    Path(".env.local.vastai").unlink()
    assert get_vastai_config().min_vram_gb == 24
    assert "VASTAI_MIN_VRAM_GB" not in os.environ


def test_named_env_file_is_read_instead_of_the_local_one(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    Path(".env.local.vastai").write_text("VASTAI_MIN_VRAM_GB=48\nVASTAI_DEFAULT_DISK_GB=10\n")
    named = tmp_path / "prod.env"
    named.write_text("VASTAI_MIN_VRAM_GB=80\n")
    cfg = get_vastai_config(env_file=named)
    assert (cfg.min_vram_gb, cfg.default_disk_gb) == (80, 64)


def test_missing_named_env_file_is_an_error_alongside_others(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    problems = problems_of(env_file=tmp_path / "absent.env")
    assert list(problems) == ["env_file", "VASTAI_API_KEY", "VASTAI_SSH_KEY_PATH"]
    assert "not found" in problems["env_file"]


def test_env_file_in_parent_folder_is_not_read(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    child = parent / "child"
    child.mkdir(parents=True)
    (parent / ".env.local.vastai").write_text("VASTAI_MIN_VRAM_GB=99\n")
    env.chdir(child)
    assert get_vastai_config().min_vram_gb == 24


# --- key file ---


def test_key_file_public_line_and_absolute_path(
    env: pytest.MonkeyPatch, key_file: tuple[Path, str]
) -> None:
    os.chdir(key_file[0].parent)
    env.setenv("VASTAI_SSH_KEY_PATH", key_file[0].name)
    cfg = get_vastai_config()
    assert cfg.ssh_public_key == key_file[1]
    assert cfg.ssh_public_key.startswith("ssh-ed25519 ")
    assert cfg.ssh_key_path == key_file[0]


@pytest.mark.parametrize(
    ("make", "variable", "reason"),
    [
        ("missing", "VASTAI_SSH_KEY_PATH", "missing"),
        ("directory", "VASTAI_SSH_KEY_PATH", "unreadable"),
        ("text", "VASTAI_SSH_KEY_PATH", "not a private key"),
        ("public", "VASTAI_SSH_KEY_PATH", "not a private key"),
        ("encrypted", "VASTAI_SSH_KEY_PASSPHRASE", "encrypted"),
        ("wrong-passphrase", "VASTAI_SSH_KEY_PASSPHRASE", "wrong passphrase"),
        ("mode-0644", "VASTAI_SSH_KEY_PATH", "group or others"),
        ("mode-0604", "VASTAI_SSH_KEY_PATH", "group or others"),
    ],
)
def test_bad_key_file_is_refused(
    env: pytest.MonkeyPatch, tmp_path: Path, make: str, variable: str, reason: str
) -> None:
    path = tmp_path / "k"
    if make == "directory":
        path.mkdir()
    elif make == "text":
        path.write_text("hello, not a key\n")
        path.chmod(0o600)
    elif make == "public":
        asyncssh.generate_private_key("ssh-ed25519").write_public_key(path)
        path.chmod(0o600)
    elif make == "encrypted":
        write_key(path, passphrase=PASSPHRASE)
    elif make == "wrong-passphrase":
        write_key(path, passphrase=PASSPHRASE)
        env.setenv("VASTAI_SSH_KEY_PASSPHRASE", "not-the-passphrase")
    elif make.startswith("mode-"):
        write_key(path, mode=int(make.removeprefix("mode-"), 8))
    env.setenv("VASTAI_SSH_KEY_PATH", str(path))
    with pytest.raises(ConfigError) as info:
        get_vastai_config()
    problems = dict(info.value.problems)
    assert list(problems) == [variable]
    assert reason in problems[variable]
    assert "not-the-passphrase" not in str(info.value)
    assert API_KEY not in str(info.value)


def test_encrypted_key_loads_with_its_passphrase(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "k"
    public = write_key(path, passphrase=PASSPHRASE)
    env.setenv("VASTAI_SSH_KEY_PATH", str(path))
    env.setenv("VASTAI_SSH_KEY_PASSPHRASE", PASSPHRASE)
    cfg = get_vastai_config()
    assert (cfg.ssh_key_passphrase, cfg.ssh_public_key) == (PASSPHRASE, public)


@pytest.mark.parametrize("how", ["variable", "argument"])
def test_insecure_key_mode_allowed_when_opted_in(
    env: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    path = tmp_path / "k"
    public = write_key(path, mode=0o644)
    env.setenv("VASTAI_SSH_KEY_PATH", str(path))
    if how == "variable":
        env.setenv("VASTAI_ALLOW_INSECURE_KEY", "1")
        cfg = get_vastai_config()
    else:
        cfg = get_vastai_config(allow_insecure_key=True)
    assert (cfg.allow_insecure_key, cfg.ssh_public_key) == (True, public)


# --- keyword arguments, timings, pacing ---


def test_keyword_arguments_set_every_field(tmp_path: Path, key_file: tuple[Path, str]) -> None:
    """With no environment at all, the arguments alone build a config."""
    cfg = get_vastai_config(
        api_key="kw-key",
        api_base_url="http://127.0.0.1:9/api/v0",
        ssh_key_path=key_file[0],
        preferred_gpus=["H100", " L40S "],
        template_ids="7, 8",
        max_bid_usd_per_hour=3.5,
        min_vram_gb=0,
        default_disk_gb=20,
        default_image="ubuntu:24.04",
        owner="ci-runner",
        state_dir=tmp_path / "st",
        allow_insecure_key=False,
    )
    assert cfg.api_key == "kw-key"
    assert cfg.api_root == "http://127.0.0.1:9"
    assert cfg.preferred_gpus == ("H100", "L40S")
    assert cfg.template_ids == ("7", "8")
    assert (cfg.max_bid_usd_per_hour, cfg.min_vram_gb, cfg.default_disk_gb) == (3.5, 0, 20)
    assert isinstance(cfg.min_vram_gb, float)
    assert (cfg.default_image, cfg.owner, cfg.state_dir) == (
        "ubuntu:24.04",
        "ci-runner",
        tmp_path / "st",
    )


def test_timings_object_wins_over_timeout_variables(env: pytest.MonkeyPatch) -> None:
    """Given timings, the timeout variables are not read at all, even when invalid."""
    env.setenv("VASTAI_LOADING_TIMEOUT_S", "not a number")
    env.setenv("VASTAI_SSH_TIMEOUT_S", "5")
    mine = Timings(loading_s=7.0, ssh_s=8.0)
    assert get_vastai_config(timings=mine).timings == mine


def test_timeout_arguments_apply_on_top_of_a_timings_object(env: pytest.MonkeyPatch) -> None:
    cfg = get_vastai_config(timings=Timings(overall_s=99.0), loading_timeout_s=3.0, ssh_timeout_s=4)
    assert (cfg.timings.overall_s, cfg.timings.loading_s, cfg.timings.ssh_s) == (99, 3, 4)


def test_pacing_object_is_used_as_given(env: pytest.MonkeyPatch) -> None:
    pacing = Pacing().scaled(0.1)
    assert get_vastai_config(pacing=pacing).pacing is pacing


# --- secrets, helpers ---


def test_secrets_never_in_repr_or_str(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_key(path, passphrase=PASSPHRASE)
    env.setenv("VASTAI_SSH_KEY_PATH", str(path))
    cfg = get_vastai_config(ssh_key_passphrase=PASSPHRASE)
    for text in (repr(cfg), str(cfg)):
        assert API_KEY not in text
        assert PASSPHRASE not in text
    assert "ssh_public_key=" in repr(cfg)


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        ("https://console.vast.ai/api/v0", "https://console.vast.ai"),
        ("https://console.vast.ai/api/v0/", "https://console.vast.ai"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
        ("http://sandbox:8000/", "http://sandbox:8000"),
        ("http://proxy.example/vast/api/v0", "http://proxy.example/vast"),
    ],
)
def test_api_root_strips_api_v0(env: pytest.MonkeyPatch, base_url: str, root: str) -> None:
    assert get_vastai_config(api_base_url=base_url).api_root == root


def test_default_owner_matches_pattern_and_differs_per_call() -> None:
    first, second = default_owner(), default_owner()
    assert OWNER_RE.fullmatch(first)
    assert f"-{os.getpid()}-" in first
    assert first != second


@pytest.mark.parametrize(
    ("hostname", "prefix"),
    [("build box:7", "build-box-7-"), ("héllo.local", "h-llo.local-"), ("", "host-")],
)
def test_default_owner_sanitises_hostname(
    monkeypatch: pytest.MonkeyPatch, hostname: str, prefix: str
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    owner = default_owner()
    assert owner.startswith(prefix)
    assert OWNER_RE.fullmatch(owner)


def test_default_owner_fits_64_characters_with_long_hostname(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "n" * 200)
    owner = default_owner()
    assert len(owner) == 64
    assert OWNER_RE.fullmatch(owner)


def test_generate_ssh_keypair_writes_private_0600_and_pub(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "keys" / "sandbox_ed25519"
    public = generate_ssh_keypair(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.with_name("sandbox_ed25519.pub").read_text() == public + "\n"
    assert public.startswith("ssh-ed25519 ")
    assert get_vastai_config(ssh_key_path=path).ssh_public_key == public


def test_generate_ssh_keypair_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("old")
    path.chmod(0o644)
    generate_ssh_keypair(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert asyncssh.read_private_key(path) is not None


def test_config_is_frozen(env: pytest.MonkeyPatch) -> None:
    cfg = get_vastai_config()
    assert isinstance(cfg, VastAIConfig)
    with pytest.raises(AttributeError):
        cfg.api_key = "x"  # type: ignore[misc]


def test_api_key_surrounding_whitespace_is_dropped(key_file: tuple[Path, str]) -> None:
    """A trailing newline pasted into the env file must not end up in the Bearer header."""
    Path(".env.local.vastai").write_text(
        f"VASTAI_API_KEY='  {API_KEY}\n'\nVASTAI_SSH_KEY_PATH={key_file[0]}\n"
    )
    assert get_vastai_config().api_key == API_KEY


KNOWN_VARIABLES = {
    "VASTAI_API_KEY",
    "VASTAI_API_BASE_URL",
    "VASTAI_SSH_KEY_PATH",
    "VASTAI_SSH_KEY_PASSPHRASE",
    "VASTAI_PREFERRED_GPUS",
    "VASTAI_TEMPLATE_IDS",
    "VASTAI_MAX_BID_PER_HOUR",
    "VASTAI_MIN_VRAM_GB",
    "VASTAI_DEFAULT_DISK_GB",
    "VASTAI_DEFAULT_IMAGE",
    "VASTAI_OWNER",
    "VASTAI_STATE_DIR",
    "VASTAI_LOADING_TIMEOUT_S",
    "VASTAI_SSH_TIMEOUT_S",
    "VASTAI_ALLOW_INSECURE_KEY",
}
REPO = Path(__file__).resolve().parents[2]


def test_example_env_file_lists_every_variable_and_parses(
    monkeypatch: pytest.MonkeyPatch, key_file: tuple[Path, str]
) -> None:
    """The example names each variable; uncommented with the key path filled in, it loads."""
    text = (REPO / ".env.local.vastai.example").read_text()
    assert set(re.findall(r"^#? ?(VASTAI_[A-Z_]+)=", text, re.M)) == KNOWN_VARIABLES
    active = "\n".join(
        line.removeprefix("# ") for line in text.splitlines() if re.match(r"#? ?VASTAI_", line)
    )
    active = re.sub(r"^VASTAI_API_KEY=.*$", f"VASTAI_API_KEY={API_KEY}", active, flags=re.M)
    active = re.sub(
        r"^VASTAI_SSH_KEY_PATH=.*$", f"VASTAI_SSH_KEY_PATH={key_file[0]}", active, flags=re.M
    )
    Path("example.env").write_text(active + "\n")
    cfg = get_vastai_config(env_file="example.env")
    assert (cfg.max_bid_usd_per_hour, cfg.min_vram_gb, cfg.default_disk_gb) == (4.5, 24, 64)
    assert cfg.timings == Timings()
    assert cfg.api_base_url == DEFAULT_API_BASE_URL


def test_configuration_doc_has_a_row_per_variable() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `(VASTAI_[A-Z_]+)` \|", text, re.M))
    assert rows == KNOWN_VARIABLES

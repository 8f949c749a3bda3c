"""Device profiles: packaged files, aliases, user folders, validation errors that name the file and field."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgemvp.deploy.devices import ENV_PROFILES, PACKAGED, ProfileRegistry, load_profile
from edgemvp.errors import UsageError
from tests.deploy_helpers import profile_data, write_profile


def test_packaged_profiles_load_with_aliases() -> None:
    reg = ProfileRegistry()
    assert {"host", "jetson-nano", "jetson-orin-nano", "rpi4", "rpi5"} <= set(reg.names())
    assert reg.get("jetson").name == "jetson-nano" and reg.get("rpi").name == "rpi4"
    assert reg.get("host").is_current() and not reg.get("rpi4").is_current()
    assert [p.name for p in reg.current()] == ["host"]
    nano = reg.get("jetson-nano")
    assert nano.runtime.providers[0].name == "TensorrtExecutionProvider" and nano.budget.statistic == "p90"
    assert all(r.source in nano.calibration.sources for r in nano.calibration.references)
    assert len(reg.get("host").calibration.suite) >= 20 and reg.get("host").hardware.cores >= 1
    assert (Path(__file__).parents[1] / "device_profiles" / "host.yaml").is_file()  # the top-level link


def test_unknown_device_lists_valid_names() -> None:
    with pytest.raises(UsageError, match=r"unknown device 'pi9'; valid devices: .*jetson-nano.*rpi"):
        ProfileRegistry().get("pi9")


def test_user_folder_and_env_override_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profile(tmp_path / "mine", profile_data("rpi4", name="my-board", aliases=["board"]))
    reg = ProfileRegistry((tmp_path / "mine",))
    assert reg.get("board").name == "my-board"
    write_profile(tmp_path / "env", profile_data("host", description="overridden"))
    monkeypatch.setenv(ENV_PROFILES, str(tmp_path / "env"))
    assert ProfileRegistry().get("host").description == "overridden"


@pytest.mark.parametrize("text, message", [
    ("name: x\n  bad: [indent", "malformed YAML at line"),
    ("- just\n- a list\n", "'profile' must be a mapping"),
])
def test_malformed_yaml_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        load_profile(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("budget"), "field 'budget' is missing"),
    (lambda d: d["budget"].pop("latency_ms"), "field 'budget.latency_ms' is missing"),
    (lambda d: d["budget"].__setitem__("statistic", "p95"), "'budget.statistic' is 'p95'; valid values: p50, p90"),
    (lambda d: d["runtime"].__setitem__("threads", "two"), "'runtime.threads' must be int"),
    (lambda d: d["runtime"].__setitem__("providers", []), "'runtime.providers' must list at least one"),
    (lambda d: d["hardware"].pop("peak_gflops"), "'hardware.peak_gflops' is missing"),
    (lambda d: d["calibration"]["suite"][0].__setitem__("arch", "vgg"), "suite[0].arch' is 'vgg'; valid values"),
])
def test_incomplete_or_invalid_profile_names_the_field(tmp_path: Path, mutate, message: str) -> None:
    data = profile_data("host")
    mutate(data)
    path = write_profile(tmp_path, data)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_profile(path)


def test_reference_must_cite_a_known_source(tmp_path: Path) -> None:
    data = profile_data("rpi4")
    data["calibration"]["references"][0]["source"] = "a-blog"
    with pytest.raises(UsageError, match="names 'a-blog', which is not under calibration.sources"):
        load_profile(write_profile(tmp_path, data))


def test_packaged_folder_is_package_data() -> None:
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert "device_profiles/*.yaml" in text and PACKAGED.name == "device_profiles"

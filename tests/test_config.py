from __future__ import annotations

from pathlib import Path

import pytest

from aepacs.config import Route, load_config
from aepacs.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return p


def test_default_config_resolves_under_home(home: Path) -> None:
    cfg = load_config()
    assert cfg.data_dir == home.resolve()
    assert cfg.store_path == home.resolve() / "blobs"
    assert cfg.keyring_path == home.resolve() / "keyring.json"
    assert cfg.index_url == f"sqlite:///{home.resolve()}/index.sqlite3"
    # lossless everywhere; CT through the shipped wavelet model's lossless mode, MR mr@4, US JPEG-XL
    assert cfg.route_for("CT") == Route(model="ct", mode="lossless")
    assert cfg.route_for("MR") == Route(model="mr@4", mode="lossless")
    assert cfg.route_for("US") == Route(codec="jpegxl")  # JPEG-XL lossless wins on colour US
    assert cfg.route_for("CR") == cfg.route_for("SR") == Route()


def test_by_default_sealed_objects_go_only_to_registered_recipients(home: Path, tmp_path: Path) -> None:
    # (the tests' own site allows the archive's KEK-sealed form: tests/conftest.py TEST_SITE)
    assert load_config(write(tmp_path, "")).transport.unregistered == "refuse"
    assert load_config().transport.unregistered == "keyring"


def test_site_file_overrides_only_what_it_names(home: Path, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "codec:\n  zstd_level: 3\nroutes:\n  mr: lossless\n"))
    assert cfg.codec.zstd_level == 3
    assert cfg.codec.lossless == "jpegls"          # untouched default
    assert cfg.routes["MR"] == Route() and cfg.routes["CT"] == Route(model="ct", mode="lossless")


def test_a_route_may_name_a_standard_codec(home: Path, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "routes:\n  us: jpegls\n  cr: jpegxl\n  sr: zstd\n  ct: htj2k\n"))
    assert cfg.route_for("US") == Route(codec="jpegls") and cfg.route_for("CR").name == "jpegxl"
    assert cfg.route_for("SR") == Route(codec="zstd") and cfg.route_for("CT") == Route(codec="htj2k")
    with pytest.raises(ConfigError, match="jpegls, htj2k, jpegxl, zstd"):
        load_config(write(tmp_path, "routes:\n  us: png\n"))


def test_learned_routes(home: Path, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "routes:\n  ct: ct@2:lossy\n  mr: {model: mr, mode: lossless}\n"
                                      "  us: {model: us, min_psnr: 38, target_psnr: 45.5}\n"))
    assert cfg.route_for("CT") == Route(model="ct@2", mode="lossy")
    assert cfg.route_for("MR") == Route(model="mr", mode="lossless")
    assert cfg.route_for("US") == Route(model="us", mode="lossy", min_psnr=38.0, target_psnr=45.5)
    assert cfg.route_for("SR") == Route()


def test_absolute_paths_stay_absolute(home: Path, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"store:\n  path: {tmp_path}/elsewhere\n"))
    assert cfg.store_path == tmp_path / "elsewhere"


@pytest.mark.parametrize("text, message", [
    ("codec:\n  zstd_levle: 3\n", "codec.zstd_levle: unknown key"),
    ("codec:\n  zstd_level: high\n", "codec.zstd_level: expected an integer"),
    ("codec:\n  zstd_level: 40\n", "codec.zstd_level: 40 is outside 1..22"),
    ("codec:\n  lossless: jpeg2000\n", "codec.lossless: 'jpeg2000' is not one of"),
    ("routes:\n  CT: magic\n", "routes.CT: 'magic' is not lossless"),
    ("routes:\n  CT: ct:fuzzy\n", "routes.CT.mode: 'fuzzy' is not one of"),
    ("routes:\n  CT: {model: ct, gain: high}\n", "routes.CT.gain: expected int"),
    ("routes:\n  CT: {model: 'c t', mode: lossy}\n", "bad model reference"),
    ("storage:\n  path: x\n", "storage: unknown key"),
    ("index: sqlite://\n", "index: expected a mapping"),
    ("[1, 2]\n", "top level must be a mapping"),
    ("codec: {lossless: [\n", "not valid YAML"),
])
def test_bad_config_names_file_and_key(home: Path, tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_config_env_variable_is_used(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEPACS_CONFIG", str(write(tmp_path, "log:\n  level: DEBUG\n")))
    assert load_config().log.level == "DEBUG"


def test_server_section(home: Path, tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "server:\n  port: 4242\n  allowed_calling_aets: [MODALITY1]\n"
                                      "  move_destinations:\n    VIEWER: [127.0.0.1, 11113]\n"
                                      "  tls:\n    enabled: true\n"))
    assert cfg.server.port == 4242 and cfg.server.bind == "127.0.0.1"
    assert cfg.server.allowed_calling_aets == ["MODALITY1"]
    assert cfg.server.move_destinations == {"VIEWER": ["127.0.0.1", 11113]}
    assert cfg.server.tls.enabled is True and cfg.server.retrieve_as == "sealed"


@pytest.mark.parametrize("text, message", [
    ("server:\n  move_destinations:\n    VIEWER: [127.0.0.1]\n",
     "server.move_destinations.VIEWER: expected [host, port]"),
    ("server:\n  tls:\n    enabled: yes please\n", "server.tls.enabled: expected true or false"),
    ("server:\n  allowed_calling_aets: MOD1\n", "server.allowed_calling_aets: expected a list"),
    ("server:\n  port: 70000\n", "server.port: 70000 is outside"),
    ("server:\n  retrieve_as: plain\n", "server.retrieve_as: 'plain' is not one of"),
])
def test_bad_server_config(home: Path, tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(write(tmp_path, text))


def test_learned_example_config_names_shipped_models(home: Path) -> None:
    from aepacs.config import DEFAULT_CONFIG_PATH
    from aepacs.models.registry import SHIPPED, Registry

    cfg = load_config(DEFAULT_CONFIG_PATH.parent / "learned.yaml")
    models = {r.model for r in cfg.routes.values() if r.model}
    assert models >= {"ct", "mr", "cr", "us"}
    shipped = Registry(SHIPPED)
    for name in models:
        model = shipped.load(name)
        assert model.manifest["modality"] and model.arch == "wavelet"
    assert cfg.route_for("DX").model == "cr" and cfg.route_for("SR") == Route()


def test_a_lossy_route_to_a_lossless_only_model_is_refused(home: Path, tmp_path: Path) -> None:
    from aepacs.pipeline.codecs import check_routes

    check_routes(load_config())  # the embedded default (mr@4 lossless) passes
    with pytest.raises(ConfigError, match=r"routes\.MR: mr@4 is lossless only"):
        check_routes(load_config(write(tmp_path, "routes:\n  MR: mr@4:lossy\n")))

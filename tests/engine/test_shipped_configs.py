"""Every config the project ships loads: a training config validates, and a benchmark config builds
every cell's training config, method and attack suite — so a typo in an option of a config that only
a long run (or a GPU) would read fails here first."""

from pathlib import Path

import pytest
import yaml

from robustdml.cli.config import load_train_config
from robustdml.benchmark import load_benchmark_config
from robustdml.methods import create_method

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_the_configs_folder_is_found():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path):
    if "grid" not in yaml.safe_load(path.read_text()):
        assert load_train_config(path).epochs >= 1
        return
    bench = load_benchmark_config(path)
    cells = bench.cells()
    assert cells
    for cell in cells:
        cfg = bench.train_config(cell)
        create_method(cfg.method, **cfg.method_kwargs)
        assert bench.suite(cfg).specs()


def test_variants_name_a_method_with_its_options(tmp_path):
    from robustdml.errors import ConfigError
    path = tmp_path / "b.yaml"
    grid = {"dataset": ["digits"], "backbone": ["small-cnn"], "method": ["eat", "eat-cross"], "seed": [0]}
    path.write_text(yaml.safe_dump({"grid": grid, "method_kwargs": {"eat": {"steps": 2}},
                                    "variants": {"eat-cross": {"method": "eat", "method_kwargs": {"transfer": "cross"}}}}))
    bench = load_benchmark_config(path)
    plain, cross = (bench.train_config(c) for c in bench.cells())
    assert (plain.method, plain.method_kwargs) == ("eat", {"steps": 2})
    assert (cross.method, cross.method_kwargs) == ("eat", {"transfer": "cross"})  # a variant's own options only
    assert [c["method"] for c in bench.cells()] == ["eat", "eat-cross"]  # cells keep the variant's name
    for bad, match in [({"eat": {"method": "eat"}}, "name of a method"), ({"x": {"kwargs": {}}}, "must be"),
                       ({"x": {"method": "eat", "method_kwargs": {"transfer": "sideways"}}}, "transfer")]:
        path.write_text(yaml.safe_dump({"grid": {**grid, "method": list(bad)}, "variants": bad}))
        with pytest.raises(ConfigError, match=match):
            load_benchmark_config(path)

"""harness.run.isolation: every guarantee named once, each state a finding, compose.yaml held to it."""
import pytest
import yaml

from harness.findings import INFO, PASS, WARN
from harness.paths import REPO
from harness.run import isolation
from harness.run.isolation import ENFORCED, GUARANTEES, NOT_ENFORCED, OBSERVED


@pytest.mark.parametrize("name", GUARANTEES)
def test_each_state_of_each_guarantee_becomes_its_finding(name):
    weak = INFO if name in ("data_view", "pid_limit") else WARN
    for state, status in ((ENFORCED, PASS), (OBSERVED, weak), (NOT_ENFORCED, weak)):
        (found,) = isolation.findings("eval", {name: state})
        assert (found.check, found.code, found.status) == ("isolation", f"isolation.{name}", status)
        assert found.message.startswith(f"eval: {name.replace('_', ' ')} {state}")
        assert found.data == {"phase": "eval", "state": state}


def test_an_unregistered_guarantee_or_state_is_refused():
    with pytest.raises(ValueError, match="unregistered isolation guarantee"):
        isolation.findings("train", {"made_up": ENFORCED})
    with pytest.raises(ValueError, match="unknown state"):
        isolation.findings("train", {"network": "disabled"})


def test_findings_follow_the_registry_order():
    states = {name: ENFORCED for name in reversed(list(GUARANTEES))}
    assert [f.code for f in isolation.findings("eval", states)] == [f"isolation.{n}" for n in GUARANTEES]


def _services():
    return yaml.safe_load((REPO / "compose.yaml").read_text())["services"]


@pytest.mark.parametrize("name", [g.name for g in GUARANTEES.values() if g.compose])
def test_compose_services_carry_what_the_registry_says(name):
    """compose.yaml repeats the container back end's hardening; the registry says where, this holds it there."""
    guarantee, services = GUARANTEES[name], _services()
    for service in ("train", "eval", "train-cpu", "eval-cpu"):
        if service.split("-")[0] not in guarantee.phases:
            continue
        config = services[service]
        for key, wanted in guarantee.compose.items():
            if key == "volumes":
                assert any(str(v).endswith(wanted) for v in config["volumes"]), (service, name, config["volumes"])
            elif wanted is None:
                assert key not in config, (service, name)  # the engine's default is the guarantee
            else:
                assert config.get(key) == wanted, (service, name, key)


def test_legacy_lists_what_it_gives_up():
    found = isolation.legacy_findings()
    assert {f.code for f in found} == {f"guarantees.{n}" for n in isolation.LEGACY_GAPS}
    assert {f.status for f in found} == {WARN}

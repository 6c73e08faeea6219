"""The slot naming rule: slot key and slot name invert each other; parameters find their slot."""

from __future__ import annotations

import pytest

from esper.leyline.names import SLOT_PREFIX, check_slot_name, slot_key, slot_name, slot_of
from esper.optim import HOST_GROUP, group_of


@pytest.mark.parametrize("name", ["mid", "layer3.0", "transformer.h.2.mlp", "0"])
def test_a_slot_key_reads_back_to_its_name(name: str) -> None:
    key = slot_key(name)
    assert "." not in key and slot_name(key) == name
    assert slot_of(f"{SLOT_PREFIX}{key}.seed.0.weight") == name


@pytest.mark.parametrize("bad", ["", "a-b", 3, None])
def test_a_name_that_could_not_read_back_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="slot name"):
        check_slot_name(bad)  # type: ignore[arg-type]


def test_parameters_of_the_host_belong_to_no_slot_and_to_the_host_group() -> None:
    assert slot_of("host.layer3.0.conv1.weight") is None
    assert group_of("host.layer3.0.conv1.weight") == HOST_GROUP
    assert group_of("seed_slots.layer3-0.seed.up.weight") == "layer3.0"
    assert group_of("seed_slots.mid.gate.net.0.bias") == "mid"

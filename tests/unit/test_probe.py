"""Block-role assignment from probe gains (the data path is exercised in integration tests)."""

from unziplora.models.profiles import profile_from_dict
from tests.pipelines import tiny_sdxl_components
from unziplora.probe import GroupScore, assign_roles, average, module_groups, profile_dict


def test_module_groups_of_an_sdxl_shaped_unet():
    groups = module_groups(tiny_sdxl_components()["unet"])
    assert groups[0] == "down_blocks.1.attentions.0" and "mid_block.attentions.0" in groups
    assert len(groups) == 11 and len(set(groups)) == 11


def test_roles_follow_normalised_gains():
    scores = [GroupScore("a", 0.30, 0.01), GroupScore("b", 0.02, 0.20), GroupScore("c", 0.20, 0.18),
              GroupScore("d", -0.05, -0.02)]
    roles = assign_roles(scores)
    assert roles == {"a": "content", "b": "style", "c": "both", "d": "both"}
    profile = profile_from_dict(profile_dict("m", roles, "test"))
    assert [m.prefix for m in profile.modules] == ["a", "b"]
    assert (profile.b_lora.content, profile.b_lora.style) == ("a", "b")


def test_b_lora_modules_are_the_strongest_group_of_each_role_or_none():
    scores = [GroupScore("a", 0.10, 0.0), GroupScore("b", 0.30, 0.01), GroupScore("c", 0.0, 0.0)]
    roles = {"a": "content", "b": "content", "c": "both"}
    b_lora = profile_dict("m", roles, "test", scores)["b_lora"]
    assert b_lora == {"content": "b", "style": None}


def test_noise_level_gains_of_one_kind_are_not_stretched_into_roles():
    # style gains all tiny: without the floor the best one (0.02) would normalise to 1 and tie "a"
    scores = [GroupScore("a", 0.16, 0.02), GroupScore("b", 0.01, 0.015), GroupScore("c", 0.05, -0.01)]
    assert assign_roles(scores) == {"a": "content", "b": "both", "c": "both"}
    assert assign_roles(scores, min_gain=1e-8)["a"] == "both"


def test_average_over_images():
    mean = average([[GroupScore("a", 0.2, 0.0)], [GroupScore("a", 0.4, 0.2)]])
    assert abs(mean[0].content_gain - 0.3) < 1e-9 and abs(mean[0].style_gain - 0.1) < 1e-9

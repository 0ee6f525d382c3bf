"""Block-role profiles against the real SDXL UNet architecture (built on the meta device)."""

import pytest
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from unziplora.models.base import BaseModel
from unziplora.names import Branch, Role
from unziplora.errors import UnZipLoRAError
from unziplora.core.inject import attention_modules, inject_two_branch_lora
from unziplora.models.profiles import load_profile, profile_from_dict, resolve_profile
from unziplora.models.architectures import sdxl_unet_config


@pytest.fixture(scope="module")
def sdxl_unet():
    with init_empty_weights():
        return UNet2DConditionModel.from_config(sdxl_unet_config())


def test_sdxl_profile_names_real_modules_and_counts_match(sdxl_unet):
    profile = load_profile("sdxl")
    names = [name for name, _ in attention_modules(sdxl_unet)]
    assert len(names) == 140
    profile.check_against(names)  # raises if a prefix names nothing
    lora = inject_two_branch_lora(sdxl_unet, profile, rank=64)
    assert len(lora.layers) == 560
    # docs/method.md §5: 3 modules x 10 blocks x 2 attn x 4 proj with content ALL (up_blocks.0.attentions.0/.2 = 20 blocks)
    content_all = [n for n, l in lora.layers.items() if l.roles[Branch.CONTENT] is Role.ALL]
    style_all = [n for n, l in lora.layers.items() if l.roles[Branch.STYLE] is Role.ALL]
    assert len(content_all) == 20 * 2 * 4
    assert len(style_all) == (10 + 3 * 2) * 2 * 4
    assert all(n.startswith(("up_blocks.0.attentions.0.", "up_blocks.0.attentions.2.")) for n in content_all)
    assert not set(content_all) & set(style_all)
    # LoRA parameters: two branches of rank 64 on every projection
    expected = sum(2 * 64 * (l.in_features + l.out_features) for l in lora.layers.values())
    assert sum(p.numel() for p in lora.lora_parameters()) == expected


def test_roles_by_longest_prefix():
    profile = profile_from_dict({
        "name": "t", "default": {"content": "masked", "style": "masked"},
        "modules": [{"prefix": "up_blocks.0", "content": "all", "style": "masked"},
                    {"prefix": "up_blocks.0.attentions.1", "content": "masked", "style": "all"}],
    })
    assert profile.roles_for("up_blocks.0.attentions.1.transformer_blocks.0.attn1")[Branch.STYLE] is Role.ALL
    assert profile.roles_for("up_blocks.0.attentions.2.transformer_blocks.0.attn1")[Branch.CONTENT] is Role.ALL
    assert profile.roles_for("up_blocks.01.attentions.0")[Branch.CONTENT] is Role.MASKED  # not a prefix match
    assert profile.roles_for("down_blocks.1.attentions.0")[Branch.CONTENT] is Role.MASKED


def test_profile_for_another_model_is_refused():
    profile = profile_from_dict({"name": "other", "default": {"content": "masked", "style": "masked"},
                                 "modules": [{"prefix": "up_blocks.7.attentions.0", "content": "all", "style": "masked"}]})
    with pytest.raises(UnZipLoRAError, match="does not have"):
        profile.check_against(["up_blocks.0.attentions.0.transformer_blocks.0.attn1"])


def test_bad_profiles_give_clear_errors(tmp_path):
    with pytest.raises(UnZipLoRAError, match="role"):
        profile_from_dict({"name": "x", "default": {"content": "some", "style": "masked"}})
    with pytest.raises(UnZipLoRAError, match="no built-in profile"):
        load_profile("sd3")  # no built-in profile: sdxl, sd15 and flux are
    own = tmp_path / "unziplora_profile.yaml"
    own.write_text("name: mine\ndefault: {content: all, style: all}\nmodules: []\n")
    assert resolve_profile("auto", BaseModel(str(tmp_path), local=True)).name == "mine"
    assert resolve_profile("auto", None).name == "sdxl"


def test_profile_round_trips_through_dict():
    profile = load_profile("sdxl")
    assert profile_from_dict(profile.to_dict()) == profile


def test_b_lora_modules_come_from_the_profile():
    assert load_profile("sdxl").b_lora_modules() == ("up_blocks.0.attentions.0", "up_blocks.0.attentions.1")
    data = {"name": "x", "default": {"content": "masked", "style": "masked"}, "modules": []}
    with pytest.raises(UnZipLoRAError, match="b_lora must be a mapping"):
        profile_from_dict({**data, "b_lora": ["up_blocks.0"]})
    with pytest.raises(UnZipLoRAError, match="b_lora.style must be"):
        profile_from_dict({**data, "b_lora": {"content": "up_blocks.0", "style": 3}})
    with pytest.raises(UnZipLoRAError, match="for both content and style"):
        profile_from_dict({**data, "b_lora": {"content": "up_blocks.0", "style": "up_blocks.0"}})
    with pytest.raises(UnZipLoRAError, match="no content or no style modules.*b_lora.style.*--profile sdxl"):
        profile_from_dict({**data, "b_lora": {"content": "up_blocks.0.attentions.0", "style": None}}).b_lora_modules()
    with pytest.raises(UnZipLoRAError, match="does not have"):  # a b_lora module this UNet lacks
        profile_from_dict({**data, "b_lora": {"content": "up_blocks.9", "style": None}}).check_against(
            ["up_blocks.0.attentions.0.transformer_blocks.0.attn1"])


def test_embedded_model_names_its_probed_b_lora_modules():
    from unziplora.models.embedded import EMBEDDED_MODEL

    if not (EMBEDDED_MODEL / "unziplora_profile.yaml").is_file():
        pytest.skip("no embedded model")
    profile = resolve_profile("auto", BaseModel.resolve(EMBEDDED_MODEL))
    # its probe's evidence (block_roles.md): the content group of the largest gain, no style group
    rows = [line.split("|")[1:5] for line in (EMBEDDED_MODEL / "block_roles.md").read_text().splitlines()
            if line.startswith("| ") and "attentions" in line]
    content = [(float(gain), group.strip()) for group, gain, _, role in rows if role.strip() == "content"]
    assert profile.b_lora.content == max(content)[1] and profile.b_lora.style is None
    assert not any(role.strip() == "style" for *_, role in rows)
    with pytest.raises(UnZipLoRAError, match="no content or no style modules"):
        profile.b_lora_modules()

"""Full-size base-model architectures as configs: built with random weights (or on the meta device)
for names, shapes, parameter counts, memory and speed, never for image quality."""

from __future__ import annotations


def sdxl_unet_config() -> dict:
    """The UNet config of stabilityai/stable-diffusion-xl-base-1.0, written out
    from its published unet/config.json, so
    ``UNet2DConditionModel.from_config(sdxl_unet_config())`` builds the real
    architecture with random weights (or on the meta device via
    ``accelerate.init_empty_weights``): 140 Attention modules, 2,567,463,684
    parameters.
    """
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 2048,
        "cross_attention_norm": None,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,  # 6 * 256 time ids + 1280 pooled text
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": None,
        "use_linear_projection": True,
    }


def small_sdxl_unet_config() -> dict:
    """SDXL's UNet topology (the same module names and block roles) at a few channels: what dry runs of
    the full-size benchmarks build on a CPU in a second."""
    return {**sdxl_unet_config(), "block_out_channels": [32, 64, 64], "attention_head_dim": [2, 2, 4],
            "transformer_layers_per_block": [1, 1, 1], "cross_attention_dim": 64, "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32, "norm_num_groups": 8, "sample_size": 8}


def sd15_unet_config() -> dict:
    """The UNet config of Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5, unet/config.json, as
    published): 859.5 M parameters, 32 attention modules (16 self + 16 cross)."""
    return {
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }



def flux_transformer_config() -> dict:
    """The transformer config of black-forest-labs/FLUX.1-dev (transformer/config.json, as published):
    19 double-stream and 38 single-stream blocks of width 3072, guidance-distilled."""
    return {
        "_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24,
        "num_layers": 19, "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768,
    }


def small_flux_transformer_config() -> dict:
    """FLUX.1's topology (19 double-stream, 38 single-stream blocks, guidance-distilled) at a width of 16:
    the full-size config's names and block counts, so its built-in profile fits, in a model a CPU runs
    in seconds (the GPU check's dry run)."""
    return {**flux_transformer_config(), "attention_head_dim": 8, "num_attention_heads": 2,
            "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": [2, 2, 4]}

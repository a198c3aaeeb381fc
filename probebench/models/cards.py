"""The named successor and medical backbones, each as its model card states it: where the weights are and in which
format, the architecture (so that random weights need no download), the preprocessing (input size, resize, crop,
interpolation, mean/std), the feature the card recommends as the default tap, the licence and whether the hub asks
users to accept terms first (gated). A snapshot or model folder given as ``--weights`` defines the architecture
(its ``config.json``) and, for Hugging Face snapshots, the preprocessing (``preprocessor_config.json``).

Sources: each repo's model card and config files on huggingface.co (the ``Card.source`` below).
"""

from __future__ import annotations

from probebench.models.config import IMAGENET_MEAN, IMAGENET_STD, Card, ModelConfig, Preprocessing
from probebench.models.hf_models import hf_entry
from probebench.models.open_clip_models import OPENAI_MEAN, OPENAI_STD, open_clip_entry
from probebench.models.timm_models import timm_entry

HF = "huggingface.co/"
NC_ND = "CC-BY-NC-ND-4.0"
OWKIN = "Owkin non-commercial licence"


def _pre(size: int, interpolation: str, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, resize: int | None = None,
         squash: bool = False, hf: bool = False) -> Preprocessing:
    """``hf``: prepared by a transformers image processor (its centre crop rounds the offset down)."""
    return Preprocessing(resize=resize or size, crop=size, interpolation=interpolation, mean=tuple(mean),
                         std=tuple(std), source="model card", resize_mode="squash" if squash else "shortest",
                         crop_offset="floor" if hf else "round")


def _dinov3(name: str, size: str, hidden: int, layers: int, heads: int) -> ModelConfig:
    repo = f"facebook/dinov3-vit{size}16-pretrain-lvd1689m"
    return hf_entry(name, repo, "dinov3_vit",
                    {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
                     "num_attention_heads": heads, "patch_size": 16, "num_register_tokens": 4, "image_size": 224,
                     "layerscale_value": 1.0, "rope_theta": 100.0, "layer_norm_eps": 1e-5, "key_bias": False},
                    "cls", _pre(224, "bilinear", squash=True),
                    Card(HF + repo, "DINOv3 License", True, "CLS token after the final norm (pooler_output)"))


_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "silu"}  # passed in code by the cards (not in config.json)

ENTRIES: dict[str, ModelConfig] = {c.name: c for c in (
    _dinov3("dinov3_s", "s", 384, 12, 6),
    _dinov3("dinov3_b", "b", 768, 12, 12),
    _dinov3("dinov3_l", "l", 1024, 24, 16),
    hf_entry("rad_dino", "microsoft/rad-dino", "dinov2",
             {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 14,
              "image_size": 518, "layerscale_value": 1.0},
             "cls", _pre(518, "bicubic", (0.5307,) * 3, (0.2583,) * 3, hf=True),
             Card(HF + "microsoft/rad-dino", "MSRLA (research use)", False,
                  "CLS token (pooler_output); 518 px, chest X-ray mean/std")),
    hf_entry("medsiglip", "google/medsiglip-448", "siglip_vision_model",
             {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
              "patch_size": 14, "image_size": 448},
             "pooled", _pre(448, "bilinear", (0.5,) * 3, (0.5,) * 3, squash=True),
             Card(HF + "google/medsiglip-448", "Health AI Developer Foundations terms", True,
                  "image embedding (get_image_features: the attention-pooled output; SigLIP has no projection); "
                  "patchmean: the tokens before pooling")),
    open_clip_entry("biomedclip", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                    {"embed_dim": 512, "vision_cfg": {"timm_model_name": "vit_base_patch16_224",
                                                      "timm_model_pretrained": False, "timm_pool": "",
                                                      "timm_proj": "linear", "image_size": 224}},
                    768, _pre(224, "bicubic", OPENAI_MEAN, OPENAI_STD),
                    Card(HF + "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "MIT", False,
                         "image embedding (encode_image, 512); pooled: the ViT's CLS before the projection (768)")),
    timm_entry("uni", "MahmoodLab/UNI", "vit_large_patch16_224",
               {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
               1024, "cls", _pre(224, "bilinear"),
               Card(HF + "MahmoodLab/UNI", NC_ND, True, "CLS token (model(x) with num_classes=0)")),
    timm_entry("uni2", "MahmoodLab/UNI2-h", "vit_giant_patch14_224",
               {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8,
                "dynamic_img_size": True, **_SWIGLU},
               1536, "cls", _pre(224, "bilinear"),
               Card(HF + "MahmoodLab/UNI2-h", NC_ND, True, "CLS token (model(x) with num_classes=0)")),
    timm_entry("virchow2", "paige-ai/Virchow2", "vit_huge_patch14_224",
               {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
                "dynamic_img_size": True, "reg_tokens": 4, "no_embed_class": True, **_SWIGLU},
               1280, "cls_patchmean", _pre(224, "bicubic"),
               Card(HF + "paige-ai/Virchow2", NC_ND, True,
                    "CLS ‖ mean of the patch tokens, the 4 register tokens left out (2,560)")),
    hf_entry("phikon", "owkin/phikon", "vit",
             {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "patch_size": 16, "image_size": 224},
             "cls", _pre(224, "bilinear", squash=True),
             Card(HF + "owkin/phikon", OWKIN, False, "CLS token (last_hidden_state[:, 0])")),
    hf_entry("phikon_v2", "owkin/phikon-v2", "dinov2",
             {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 16,
              "image_size": 224, "layerscale_value": 1e-5},
             "cls", _pre(224, "bicubic", hf=True),
             Card(HF + "owkin/phikon-v2", OWKIN, False, "CLS token (last_hidden_state[:, 0])")),
    timm_entry("h_optimus_0", "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2",
               {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
               1536, "cls", _pre(224, "bicubic", (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)),
               Card(HF + "bioptimus/H-optimus-0", "Apache-2.0", True, "CLS token (model(x) with num_classes=0)")),
    timm_entry("prov_gigapath", "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2",
               {"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                "init_values": 1e-5, "mlp_ratio": 5.33334},
               1536, "cls", _pre(224, "bicubic", resize=256),
               Card(HF + "prov-gigapath/prov-gigapath", "Apache-2.0", True,
                    "CLS token (model(x) with num_classes=0); resize 256 bicubic, crop 224")),
)}

"""Tiny randomly initialised Qwen-VL models of each family, built from small configs and saved to a folder (no
download), following ../shared/reference/local-models.md: a byte-level BPE vocabulary (256 symbols, no merges)
plus Qwen's special tokens in Qwen's order, a chat template written for it, text hidden 64 / 2 layers / 2 heads /
head_dim 32 / 1 KV head, vision width 64 / depth 3 / 2 heads; MoE with 4 experts, top-2.

    path = build("qwen2.5-vl", tmp_path / "m")   # a folder from_pretrained loads
"""

from __future__ import annotations

from pathlib import Path

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
VOCAB = 256 + len(SPECIAL)
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]  # added tokens that are not special, as in Qwen's tokenizers
# The tools part follows Qwen's templates in shape (written for these tests): the functions as JSON lines inside
# <tools></tools> in the system turn, an assistant's calls as <tool_call> blocks, tool results inside
# <tool_response> in one user turn per run of tool messages. Without tools the prompt is what it always was.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant."
    "{% endif %}{{ '\\n\\n' }}# Tools\n\nCall functions when they help. Their signatures, inside "
    "<tools></tools>:\n<tools>"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}{{ '\\n' }}</tools>\n\n"
    "Write each call as JSON inside <tool_call></tool_call>:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    "{{ '\\n' }}<tool_response>\n{{ message['content'] }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}"
    "{% if loop.first and message['role'] != 'system' and not tools %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    '<tool_call>\n{"name": "{{ call[\'function\'][\'name\'] }}", "arguments": '
    "{% if call['function']['arguments'] is string %}{{ call['function']['arguments'] }}"
    "{% else %}{{ call['function']['arguments'] | tojson }}{% endif %}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen3-vl-moe")


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=SPECIAL[1:]
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    fast.add_tokens([SPECIAL[0]], special_tokens=True)
    fast.add_tokens(TOOL_TOKENS, special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _ids(tok) -> dict[str, int]:
    return {name: tok.convert_tokens_to_ids(name) for name in SPECIAL}


def config(family: str, tok, initializer_range: float = 0.02):
    import transformers as tf

    ids = _ids(tok)
    text = dict(
        vocab_size=VOCAB + 8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if family in ("qwen2-vl", "qwen2.5-vl"):
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
        if family == "qwen2-vl":
            vision = dict(
                depth=3,
                embed_dim=64,
                hidden_size=64,
                num_heads=2,
                mlp_ratio=2,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                in_channels=3,
            )
            cls = tf.Qwen2VLConfig
        else:
            vision = dict(
                depth=3,
                hidden_size=64,
                intermediate_size=128,
                num_heads=2,
                out_hidden_size=64,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=112,
                fullatt_block_indexes=[2],
                in_channels=3,
            )
            cls = tf.Qwen2_5_VLConfig
        return cls(text_config=text, vision_config=vision, **tokens)
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [6, 5, 5],
        "mrope_interleaved": True,
    }
    vision = dict(
        depth=3,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=64,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,
        deepstack_visual_indexes=[1],
        in_channels=3,
    )
    if family == "qwen3-vl-moe":
        text.update(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1, norm_topk_prob=True
        )
        return tf.Qwen3VLMoeConfig(text_config=text, vision_config=vision, **tokens)
    return tf.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)


def image_processor(family: str):
    if family.startswith("qwen3"):
        return _qwen3_image_processor()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)


def _qwen3_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 65536, "longest_edge": 16777216},
    )


def build(family: str, folder: Path, *, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Build, save and return ``folder``: weights, config, tokenizer (with chat template), image processor."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    tok = tokenizer()
    cfg = config(family, tok, initializer_range)
    with torch.device("cpu"):
        model = tf.AutoModelForImageTextToText.from_config(cfg)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    image_processor(family).save_pretrained(folder)
    return folder

"""A tiny random Llama checkpoint with a word-level tokenizer and a chat template, saved to a folder (tests)."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|eot|>{% endfor %}")
WORDS = ("a an the of with in one sentence describe visual appearance photo type shape circle square triangle "
         "red green blue star cross ring appears as is and it has sharp round corners edges colour bright dark "
         "small large thin thick line lines pattern stripes dots").split()


def save_tiny_llama(folder: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|eot|>"]
    vocab = {tok: i for i, tok in enumerate([*specials, *WORDS, ",", ".", "?", "'", "_"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", additional_special_tokens=specials[4:])
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=512, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
                         pad_token_id=vocab["<pad>"])
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_llm_knowledge(root: Path, dataset: str, classnames: list[str]) -> dict:
    """A tiny Llama under ``root/llm`` and its knowledge cache of ``classnames`` (dplbench's own questions, 2 new
    tokens per answer, the rule-based noun phrases) under ``root/knowledge``: the context a ``drople_llamp``
    instance needs."""
    from dplbench.llm.knowledge import build_knowledge

    llm = save_tiny_llama(root / "llm")
    knowledge = root / "knowledge"
    build_knowledge(dataset, classnames, llm, knowledge, extractor="rules", max_new_tokens=2, log=lambda _: None)
    return {"llm_path": str(llm), "knowledge_dir": knowledge}

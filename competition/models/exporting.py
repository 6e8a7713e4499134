"""What the kinds that fine-tune a transformers model share to export it as a folder plain
transformers (+ peft for an adapter) loads outside this project: generation_config.json with the
decoding `competition run` used, the model card's load-and-generate code and the exact prompt as a
Python function. The export itself (which model, the card around these lines) is submit.export's.
"""
from __future__ import annotations

from pathlib import Path

from .generation import decoding_kwargs
from .gguf import is_gguf
from .prompts import PromptTemplate

# The model card's last lines of its load-and-generate code, after `model` is loaded.
GENERATE_CODE = ("tokenizer = AutoTokenizer.from_pretrained(EXPORT_DIR)",
                 "output = model.generate(**tokenizer(prompt, return_tensors='pt'), "
                 "generation_config=GenerationConfig.from_pretrained(EXPORT_DIR))")


def model_generation_config(source: str):
    """A model folder's (or hub id's) generation config, from its config.json when it has no
    generation_config.json."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(source)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(source))


def write_generation_config(generation_config, tokenizer, params, folder: Path) -> dict:
    """generation_config.json in `folder`: the model's own, with the decoding `competition run`
    passes for `params` (returned)."""

    settings = decoding_kwargs(params, tokenizer, generation_config)
    generation_config.update(**settings)
    generation_config.save_pretrained(str(folder))
    return settings


def base_arguments(model: str) -> str:
    """from_pretrained's arguments for the base model: a GGUF file is read through gguf_file
    (transformers dequantises it, as `competition run` did)."""
    if is_gguf(model):
        path = Path(model).expanduser().resolve()
        return f"{str(path.parent)!r}, gguf_file={path.name!r}"
    return repr(model)


def prompt_function(params) -> str:
    """Python source of `build_prompt(tokenizer, dialogue, topic="", examples=())`: the prompt
    competition.models.prompts builds for these Prompt settings, with nothing of this project (an export's
    user needs the exact text: the fixed labels and the system message change the outputs)."""
    template = PromptTemplate.from_params(params)
    system = f"[{{'role': 'system', 'content': {template.system!r}}}]" if template.system else "[]"
    lines = ["def build_prompt(tokenizer, dialogue, topic='', examples=()):",
             "    \"\"\"examples: dicts with dialogue, summary (and topic) shown first, most similar first.\"\"\"",
             "    def user(text, topic):",
             f"        parts = [{template.instruction!r}]" if template.instruction else "        parts = []"]
    if template.include_topic:
        lines += ["        if topic:", f"            parts.append({template.topic_label + ' '!r} + topic)"]
    lines += [f"        parts.append({template.dialogue_label + chr(10)!r} + text)",
              "        return '\\n\\n'.join(parts)",
              "",
              f"    messages = {system}",
              "    for shot in examples:",
              "        messages += [{'role': 'user', 'content': user(shot['dialogue'], shot.get('topic', ''))},",
              "                     {'role': 'assistant', 'content': shot['summary']}]",
              "    messages.append({'role': 'user', 'content': user(dialogue, topic)})",
              "    if tokenizer.chat_template:",
              "        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,",
              "                                             enable_thinking=False)",
              "        bos = tokenizer.bos_token  # the tokenizer adds BOS itself where the model wants one",
              "        if bos and text.startswith(bos) and tokenizer('')['input_ids'][:1] == [tokenizer.bos_token_id]:",
              "            text = text[len(bos):]",
              "        return text",
              "    # no chat template: plain text, each example's summary after the label that ends the prompt",
              f"    blocks = [{template.summary_label + ' '!r} + m['content'] if m['role'] == 'assistant' "
              "else m['content'] for m in messages]",
              f"    return '\\n\\n'.join(blocks) + {chr(10) * 2 + template.summary_label!r}"]
    return "\n".join(lines)

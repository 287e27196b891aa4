"""Which key a model needs, checked without importing litellm: a run fails before it starts, saying what to set,
rather than at its first LLM call."""

from __future__ import annotations

import os

# Key variables of common providers (litellm provider prefix -> env vars litellm reads, the first is the one
# to tell the user about). Providers not listed are left to litellm, whose auth errors still become LLMError.
PROVIDER_KEYS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "mistral": ("MISTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "together_ai": ("TOGETHERAI_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "fireworks_ai": ("FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY"),
    "cohere": ("COHERE_API_KEY",),
    "cerebras": ("CEREBRAS_API_KEY",),
}
KEYLESS_PROVIDERS = frozenset({"ollama", "ollama_chat"})  # litellm defaults them to localhost:11434
NEEDS_API_BASE = frozenset({"hosted_vllm", "openai_like", "lm_studio", "llamafile"})
_ALTERNATIVES = ("pass --api-base URL for a local OpenAI-compatible server (e.g. --model openai/NAME "
                 "--api-base http://localhost:8000/v1), or --model builtin for the LLM-free mode")


def provider_of(model: str) -> str | None:
    """The litellm provider a model string routes to, for the common cases (None: not known here)."""
    if "/" in model:
        return model.split("/", 1)[0].lower()
    name = model.lower()
    if name.startswith(("gpt-", "chatgpt-", "o1", "o3", "o4")):
        return "openai"  # litellm routes bare OpenAI names to OpenAI
    if name.startswith("claude-"):
        return "anthropic"
    return None


def resolve_credentials(model: str, api_base: str | None, api_key_env: str | None = None) -> str | None:
    """None when a call to `model` can be attempted; else one line saying exactly what to set.

    Cheap (no litellm import), so a CLI can check before starting a run rather than failing at the first call.
    """
    if api_base:
        return None  # a local server: whatever key it wants (usually none) is the user's business
    if api_key_env:
        if os.environ.get(api_key_env):
            return None
        return f"{api_key_env} is not set: export {api_key_env}=<key> for model {model!r}, or {_ALTERNATIVES}"
    provider = provider_of(model)
    if provider is None:
        return (f"model {model!r} names no provider litellm can route: use a litellm model string such as "
                f"openai/gpt-4o-mini (OPENAI_API_KEY) or anthropic/claude-sonnet-4-5 (ANTHROPIC_API_KEY), "
                f"or {_ALTERNATIVES}")
    if provider in KEYLESS_PROVIDERS:
        return None
    if provider in NEEDS_API_BASE:
        return f"model {model!r} is served by a local server: pass --api-base URL (e.g. http://localhost:8000/v1)"
    envs = PROVIDER_KEYS.get(provider)
    if envs is None or any(os.environ.get(e) for e in envs):
        return None
    return f"model {model!r} needs {envs[0]}: export {envs[0]}=<key>, or {_ALTERNATIVES}"

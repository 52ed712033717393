"""The service on the embedded vLLM models (its own file: a long test, so pytest-xdist can run it
beside the rest of the service suite)."""

from .serving import CONFIGS, serve_server


def test_serve_on_the_embedded_models(tmp_path, uses_vllm):
    """The main config as a profile: vLLM generator and PRM replicas, warm; a search and a
    streamed one through the openai client."""
    with serve_server(
        tmp_path / "out",
        str(CONFIGS / "game24.yaml"),
        "--set",
        "generator.gpu_memory_utilization=0.1",
        "--set",
        "prm.gpu_memory_utilization=0.1",
        timeout_s=600,
    ) as s:
        client = s.client()
        r = client.chat.completions.create(
            model="game24",
            messages=[{"role": "user", "content": "4 6 8 13"}],
            extra_body={"treesearch": {"budget": {"generated_tokens": 600}}},
        )
        ts = r.model_extra["treesearch"]
        assert r.usage.completion_tokens == ts["ledger"]["policy_generated_tokens"] <= 600
        assert (
            r.usage.prompt_tokens_details.cached_tokens > 0
        )  # vLLM's prefix cache served the tree's prefixes
        chunks = list(
            client.chat.completions.create(
                model="game24", stream=True, messages=[{"role": "user", "content": "1 2 3 4"}]
            )
        )
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")

"""Request bodies of the API (pydantic): OpenAI embeddings, TEI embed, Hugging Face fill-mask. Unknown keys are 422."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Texts = StrictStr | list[StrictStr]


class EmbeddingsRequest(BaseModel):
    """OpenAI `POST /v1/embeddings` (token-id arrays are not accepted: send strings)."""

    model_config = ConfigDict(extra="forbid")
    input: Texts = Field(description="a string or a list of strings")
    model: StrictStr = Field(description="any name; this server answers with its `embed` model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, description="accepted only when equal to the model's dimension")
    user: StrictStr | None = None


class EmbedRequest(BaseModel):
    """text-embeddings-inference `POST /embed` (also what huggingface_hub's feature_extraction sends)."""

    model_config = ConfigDict(extra="forbid")
    inputs: Texts
    normalize: StrictBool = Field(True, description="L2-normalise each vector (TEI's default)")
    truncate: StrictBool | None = Field(None, description="false: a text over the model's maximum is 413; "
                                                          "default: the model's policy (truncate)")
    truncation_direction: Literal["right", "Right"] | None = None
    prompt_name: None = None


class FillMaskParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: StrictInt | None = Field(None, description="predictions per mask (1..the exported max_top_k)")
    targets: list[StrictStr] | None = Field(None, description="rank only these tokens (each must be in the "
                                                               "model's top max_top_k to be listed)")


class FillMaskRequest(BaseModel):
    """Hugging Face Inference fill-mask: `{"inputs": "...", "parameters": {"top_k": 5, "targets": [...]}}`."""

    model_config = ConfigDict(extra="forbid")
    inputs: Texts
    parameters: FillMaskParameters | None = None
    options: dict[str, Any] | None = Field(None, description="Inference API options (wait_for_model...): ignored")

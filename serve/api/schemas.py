"""Request bodies of the API (pydantic): OpenAI embeddings, TEI embed/tokenize/decode, Hugging Face fill-mask.

Unknown keys are 422."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Texts = StrictStr | list[StrictStr]
TokenIds = list[StrictInt]  # a text's tokens (ids of the model's vocabulary), without special tokens
Inputs = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
Direction = Literal["right", "left", "Right", "Left"]


class EmbeddingsRequest(BaseModel):
    """OpenAI `POST /v1/embeddings`."""

    model_config = ConfigDict(extra="forbid")
    input: Inputs = Field(description="a string, a list of strings, a token-id array or a list of them (the text's "
                                      "tokens in this model's vocabulary; the server adds the special tokens)")
    model: StrictStr = Field(description="any name; this server answers with its `embed` model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, description="keep the first N values (1..width), re-normalised when "
                                                           "the model normalises (Matryoshka)")
    user: StrictStr | None = None


class EmbedRequest(BaseModel):
    """text-embeddings-inference `POST /embed` (also what huggingface_hub's feature_extraction sends)."""

    model_config = ConfigDict(extra="forbid")
    inputs: Inputs
    normalize: StrictBool = Field(True, description="L2-normalise each vector (TEI's default); false: the vector as "
                                                    "the model defines it (a model that normalises stays unit length)")
    truncate: StrictBool | None = Field(None, description="false: a text over the model's maximum is 413; "
                                                          "default: the model's policy (truncate)")
    truncation_direction: Direction | None = Field(None, description="which end a truncated text loses (right)")
    prompt_name: StrictStr | None = Field(None, description="one of the model's prompts (GET /info); default: the "
                                                            "model's default prompt; \"\" = none")
    dimensions: StrictInt | None = Field(None, description="keep the first N values (Matryoshka)")


class TokenizeRequest(BaseModel):
    """text-embeddings-inference `POST /tokenize`."""

    model_config = ConfigDict(extra="forbid")
    inputs: Texts
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None


class DecodeRequest(BaseModel):
    """text-embeddings-inference `POST /decode`."""

    model_config = ConfigDict(extra="forbid")
    ids: TokenIds | list[TokenIds]
    skip_special_tokens: StrictBool = True


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


class SparseEmbedRequest(BaseModel):
    """text-embeddings-inference `POST /embed_sparse`."""

    model_config = ConfigDict(extra="forbid")
    inputs: Texts
    truncate: StrictBool | None = None
    truncation_direction: Direction | None = None


class RerankRequest(BaseModel):
    """text-embeddings-inference `POST /rerank`."""

    model_config = ConfigDict(extra="forbid")
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = Field(False, description="the cross-encoder's logit instead of its sigmoid")
    return_text: StrictBool = False
    truncate: StrictBool | None = Field(None, description="false: a pair over the model's maximum is 413; default: "
                                                          "the model's policy (cut the document, never the query)")
    truncation_direction: Literal["right", "Right"] | None = Field(None, description="documents are cut at the end")


class CohereDocument(BaseModel):
    model_config = ConfigDict(extra="allow")  # Cohere v1 lets a document carry more fields; `text` is ranked
    text: StrictStr


class CohereRerankRequest(BaseModel):
    """Cohere `POST /v1/rerank` and `/v2/rerank` (also Jina's and Infinity's shape). Fields newer SDKs send that
    do not change the ranking here (max_tokens_per_doc, priority, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = Field(None, description="a rerank model of this repository (any name when it has one)")
    query: StrictStr
    documents: list[StrictStr | CohereDocument]
    top_n: StrictInt | None = Field(None, description="return the best N (default: all)")
    return_documents: StrictBool = False


class PredictParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: StrictInt | None = None
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None


Sequence = StrictStr | list[StrictStr]  # a text, or a pair [text, text_pair]


class PredictRequest(BaseModel):
    """text-embeddings-inference `POST /predict` (a text, a pair [a, b], or a list of them); `parameters` is what
    huggingface_hub's text_classification sends."""

    model_config = ConfigDict(extra="forbid")
    inputs: Sequence | list[Sequence]
    raw_scores: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Literal["right", "Right"] | None = None
    parameters: PredictParameters | None = None

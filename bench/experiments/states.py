"""States that experiments read beside a build: both models' dense token states of some texts at a
transplant's blocks, paired by the character each token ends at (what the map is fitted on), from the
cache when the build recorded them."""

from __future__ import annotations

import torch

from lm_eval_contrans.provenance import Transplant
from lm_eval_contrans.concepts import load_concept_set
from lm_eval_contrans.pipeline.fit import paired_indices
from lm_eval_contrans.pipeline.states import StateRequest, record_concept_states


def paired_token_states(transplant: Transplant, texts: list[str], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source rows, target rows, index of the text of each row) at the transplant's source and target blocks."""
    any_concept = load_concept_set("sentiment")  # a request records its texts' states too; the concept is not used
    source, target = (record_concept_states(model, [StateRequest(any_concept, layer)], anchor_texts=texts, anchor_tokens="dense",
                                            device=device, role=role)[0]
                      for model, layer, role in ((transplant.source, transplant.source_layer, "source"),
                                                 (transplant.target, transplant.target_layer, "target")))
    source_index, target_index, text_of_row = paired_indices(source, target)  # the pairing the build fits on
    return (source.anchor_states[transplant.source_layer][source_index].float(),
            target.anchor_states[transplant.target_layer][target_index].float(), text_of_row)

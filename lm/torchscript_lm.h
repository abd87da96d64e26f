// Language models of any architecture exported to TorchScript: the escape
// hatch for what lm/hf/pretrained.h does not map. LanguageModel::Open routes
// such a directory here; the module then runs behind TransformerLM (see its
// scripted constructor), so scoring, generation, kNN-LM, perplexity, the LM
// embedder and `serve` use it unchanged. Stateless functions; safe to call
// from many threads on different directories.
//
// The directory (examples/export_torchscript.py writes one; examples/README.md
// documents it for users):
//   model.torchscript.pt  torch.jit.save of a module with two methods:
//       hidden(tokens: Tensor[B, T] int64) -> Tensor[B, T, D] float32
//           the final hidden state (after the final norm, if the model has
//           one): the vector that feeds the output layer, which kNN-LM keys
//           and the LM embedder use. Causal; tokens[:, 0] sits at position
//           0 (the module computes its own positions, no mask is passed;
//           batch rows are independent and of one length).
//       logits(hidden: Tensor[..., D] float32) -> Tensor[..., V] float32
//           next-token logits, unnormalised; applied to hidden()'s output
//           or slices of it ([B, 1, D] when decoding).
//     Other methods (forward, ...) are ignored. Token ids are in [0, V).
//   config.json  {"model_type": "torchscript",
//                 "vocab_size": V,                the width of logits()
//                 "hidden_size": D,               the width of hidden()
//                 "max_position_embeddings": N,   the context: the most
//                                                 tokens one hidden() call gets
//                 "architecture": "llama"}        optional, a string shown as
//                                                 the model's architecture
//     Other keys are allowed and ignored (but hashed).
//   the tokenizer  tokenizer.json, or vocab.json + merges.txt: whatever
//     Tokenizer::LoadHfDirectory reads (a GPT-2-layout byte-level BPE), with
//     at most V tokens.
// The ModelIdentity is format "torchscript", architecture from config.json
// (else the module's class name), stored_dtype the parameters' dtype. The
// content hash covers config.json's bytes, the tokenizer and the .pt file's
// bytes. Such a model is never saved as a rag model dir, trained, or used as
// RETRO's decoder.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lm/language_model.h"

namespace rag::lm {

// The TorchScript archive inside a TorchScript model directory.
inline constexpr char kTorchScriptFile[] = "model.torchscript.pt";
// config.json's model_type of such a directory.
inline constexpr char kTorchScriptModelType[] = "torchscript";

// True when `dir` holds model.torchscript.pt or its config.json says
// model_type "torchscript" (so a directory missing one of them is reported
// by OpenTorchScriptModel rather than read as another format).
bool IsTorchScriptModelDir(const std::string& dir);

// Opens a directory in the layout above. The module is loaded on the CPU,
// put in eval mode and probed once with ids [1, 2] (zeros), so a broken
// export fails here and not at the first request. Errors name the file:
// NotFound for a missing config.json, .pt file or tokenizer; InvalidArgument
// for a config.json that is not as above, a missing method, a probe that
// throws or returns another type, dtype or shape, or a tokenizer larger
// than vocab_size; DataLoss for a .pt that is not a loadable TorchScript
// archive (truncated, or saved with torch.save instead of torch.jit.save).
absl::StatusOr<std::unique_ptr<LanguageModel>> OpenTorchScriptModel(const std::string& dir);

}  // namespace rag::lm

#include "services/cli/index_counts.h"

#include <cctype>
#include <cstdio>

#include "common/status.h"
#include "retriever/index_dir.h"

namespace rag::cli {

absl::StatusOr<IndexCounts> OpenIndexCounts(const std::string& index_dir, const std::string& model_dir,
                                            const char* who) {
  RAG_ASSIGN_OR_RETURN(auto dir, retriever::IndexDir::Open(index_dir, retriever::IndexDirOptions()));
  RAG_ASSIGN_OR_RETURN(lm::Tokenizer tok, dir->LoadTokenizer(model_dir));
  RAG_ASSIGN_OR_RETURN(auto store, dir->OpenChunkStore(/*writable=*/false));
  RAG_ASSIGN_OR_RETURN(retriever::IndexTokenCounts loaded, dir->LoadTokenCounts(*store));
  if (loaded.rebuilt) {
    std::fprintf(stderr, "%s: suffix array over all %lld documents built in %.1f s\n", who,
                 static_cast<long long>(loaded.counts.documents()), loaded.build_seconds);
  }
  return IndexCounts{std::move(tok), std::move(store), std::move(loaded)};
}

absl::StatusOr<PhraseCount> CountPhrase(const IndexCounts& c, const std::string& text) {
  PhraseCount p;
  RAG_ASSIGN_OR_RETURN(p.alone, c.loaded.counts.Count(c.tokenizer.Encode(text)));
  p.spaced = !text.empty() && !std::isspace(static_cast<unsigned char>(text[0]));
  if (p.spaced) {
    RAG_ASSIGN_OR_RETURN(p.after_space, c.loaded.counts.Count(c.tokenizer.Encode(" " + text)));
  }
  return p;
}

}  // namespace rag::cli

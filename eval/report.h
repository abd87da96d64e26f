// `rag eval ... --report DIR`: every evaluation run leaves its JSON result in
// DIR/<kind>/<run>.json; the plots and the Markdown summary are then redrawn
// from all the runs in DIR, so several runs (one per mode, with and without
// retrieval) given the same DIR end up side by side in one figure:
//   probes_p_at_1.png          P@1 by relation, one bar per run
//   memorization_match.png     token match against prefix length, one line per run
//   memorization_exact.png     exact-match rate against prefix length
//   perplexity_lambda.png      perplexity against lambda, one line per run and temperature
//   overlap.png                RETRO's perplexity by chunk overlap (rag eval retro-overlap)
//   summary.md                 every run's headline numbers, and the figures
// Plots are drawn by gnuplot (Debian's gnuplot-nox); the .dat and .gp files
// stay next to the PNGs for redrawing.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace rag::eval {

// `kind` is "probes", "memorization", "perplexity" or "overlap"; `run` names the run
// in legends and file names (letters, digits, '-', '_', '.').
absl::Status WriteReport(const std::string& dir, const std::string& kind, const std::string& run,
                         const std::string& result_json);

}  // namespace rag::eval

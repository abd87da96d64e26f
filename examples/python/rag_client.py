#!/usr/bin/python3
"""A small command-line client for `rag serve` (gRPC API rag.v1, proto/rag.proto).

Copy it as a starting point: every subcommand is one rpc, written out plainly.

    rag_client.py --server 127.0.0.1:50051 search --text "the river" -k 5
    rag_client.py --server 127.0.0.1:50051 score --text "the river" --json
    rag_client.py --server 127.0.0.1:50051 generate --prompt "The" --max-tokens 40
    rag_client.py --server 127.0.0.1:50051 next-token --text "The river"
    rag_client.py --server 127.0.0.1:50051 stats
    rag_client.py --server 127.0.0.1:50051 add --jsonl new_docs.jsonl

Run it with Debian's /usr/bin/python3, which sees python3-grpcio and
python3-protobuf (a `python3` earlier on PATH may not). The Python stubs
(rag_pb2.py, rag_pb2_grpc.py) come from --stubs DIR; without it they are
generated from proto/rag.proto into a temporary directory on each run (see
ensure_stubs and README.md).

On an rpc error the client prints the gRPC status code name and the server's
message to stderr, e.g. "error: INVALID_ARGUMENT: k must be in [1, 4096], got -1",
and exits with status 1 (2 for a usage error).
"""

import argparse
import collections
import atexit
import codecs
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import grpc
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("error: cannot import grpc: install Debian's python3-grpcio (scripts/setup.sh) "
             "and run this with /usr/bin/python3")

# The repository's proto/ directory, two levels above examples/python/.
DEFAULT_PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "proto")
PROTO_FILE = "rag.proto"


def ensure_stubs(proto_dir, out_dir):
    """Generates rag_pb2.py and rag_pb2_grpc.py from proto_dir/rag.proto into out_dir.

    Uses the system protoc and gRPC's Python plugin (Debian packages
    protobuf-compiler and protobuf-compiler-grpc), whose output matches the
    python3-grpcio / python3-protobuf runtime. Returns out_dir; raises
    RuntimeError with protoc's message when generation fails.
    """
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    if protoc is None:
        raise RuntimeError("protoc not found: install protobuf-compiler")
    if not os.path.exists(plugin):
        raise RuntimeError("grpc_python_plugin not found: install protobuf-compiler-grpc")
    proto = os.path.join(proto_dir, PROTO_FILE)
    if not os.path.exists(proto):
        raise RuntimeError("no %s in %s (give --proto-dir or --stubs)" % (PROTO_FILE, proto_dir))
    os.makedirs(out_dir, exist_ok=True)
    cmd = [protoc, "-I", proto_dir, "--python_out=" + out_dir, "--grpc_python_out=" + out_dir,
           "--plugin=protoc-gen-grpc_python=" + plugin, proto]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if result.returncode != 0:
        raise RuntimeError("protoc failed (%s): %s" % (" ".join(cmd), result.stderr.strip()))
    return out_dir


def load_stubs(stubs_dir, proto_dir):
    """Imports (rag_pb2, rag_pb2_grpc) from stubs_dir, or from freshly generated
    stubs in a temporary directory (removed at exit) when stubs_dir is None."""
    if stubs_dir is None:
        stubs_dir = tempfile.mkdtemp(prefix="rag_stubs_")
        atexit.register(shutil.rmtree, stubs_dir, True)
        ensure_stubs(proto_dir, stubs_dir)
    sys.path.insert(0, os.path.abspath(stubs_dir))
    try:
        return importlib.import_module("rag_pb2"), importlib.import_module("rag_pb2_grpc")
    except ImportError as e:
        raise RuntimeError("cannot import the stubs from %s: %s" % (stubs_dir, e))


def print_json(obj):
    # ensure_ascii=False keeps texts readable; the server's texts are valid UTF-8.
    print(json.dumps(obj, ensure_ascii=False))


# ---------------------------------------------------------------------------
# Subcommands: each takes (args, channel, pb, pb_grpc) and returns an exit code.


def cmd_search(args, channel, pb, pb_grpc):
    stub = pb_grpc.RetrievalStub(channel)
    request = pb.SearchRequest(texts=[args.text], k=args.k, nprobe=args.nprobe, exclude_doc_ids=args.exclude_doc,
                               method=args.method)
    response = stub.Search(request, timeout=args.timeout)
    neighbours = [{"rank": rank, "chunk_id": n.chunk_id, "doc_id": n.doc_id, "offset": n.offset,
                   "distance": n.distance, "text": n.text, "continuation": n.continuation}
                  for rank, n in enumerate(response.results[0].neighbours, start=1)]
    if args.json:
        print_json({"neighbours": neighbours})
    else:
        for n in neighbours:
            print("%d. [%s, chunk %d, distance %.4f]\n   %s" % (n["rank"], n["doc_id"], n["chunk_id"],
                                                            n["distance"], n["text"]))
    return 0


def mode_options(args, pb):
    """The KnnOptions and RetroOptions of a scoring request (proto/rag.proto).

    Flags left unset keep the server's defaults: `lambda` and `temperature`
    are optional fields (unset is not 0), and a 0 k or nprobe means the
    server's default. `lambda` is a Python keyword, hence setattr.
    """
    knn = pb.KnnOptions(k=args.knn_k, nprobe=args.knn_nprobe)
    if args.knn_lambda is not None:
        setattr(knn, "lambda", args.knn_lambda)
    if args.knn_temperature is not None:
        knn.temperature = args.knn_temperature
    retro = pb.RetroOptions(retrieval=args.retrieval)
    return knn, retro


def cmd_score(args, channel, pb, pb_grpc):
    stub = pb_grpc.LanguageModelStub(channel)
    knn, retro = mode_options(args, pb)
    request = pb.ScoreRequest(text=args.text, mode=args.mode, per_token=args.per_token, knn=knn, retro=retro)
    r = stub.Score(request, timeout=args.timeout)
    if args.json:
        out = {"mode": r.mode, "tokens": r.tokens, "nll": r.nll, "perplexity": r.perplexity,
               "logprob_sum": r.logprob_sum}
        if args.per_token:
            out["token_logprobs"] = [{"token": t.id, "text": t.piece.decode("utf-8", errors="replace"),
                                      "logprob": t.logprob} for t in r.token_scores]
        print_json(out)
    else:
        print("tokens %d  nll %.4f  perplexity %.2f" % (r.tokens, r.nll, r.perplexity))
        for t in r.token_scores:
            print("%9.4f  %r" % (t.logprob, t.piece.decode("utf-8", errors="replace")))
    return 0


def cmd_generate(args, channel, pb, pb_grpc):
    stub = pb_grpc.LanguageModelStub(channel)
    sampling = pb.Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    knn, retro = mode_options(args, pb)
    request = pb.GenerateRequest(prompt=args.prompt, mode=args.mode, max_tokens=args.max_tokens,
                                 sampling=sampling, ignore_eot=args.ignore_eot, knn=knn, retro=retro)
    # A token may hold part of a UTF-8 character: an incremental decoder joins
    # the pieces and replaces only bytes that can never become valid.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    token_ids, final = [], None
    for message in stub.Generate(request, timeout=args.timeout):  # one message per token, as produced
        if message.done:
            final = message
            break
        token_ids.append(message.token_id)
        if not args.json and not message.end_of_text:  # a marker, not text
            sys.stdout.write(decoder.decode(message.piece))
            sys.stdout.flush()
    if final is None:
        raise RuntimeError("the server ended Generate without its final message")
    if args.json:
        print_json({"mode": args.mode or "lm", "prompt": args.prompt, "text": final.text, "tokens": final.tokens,
                    "token_ids": token_ids})
    else:
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    return 0


def cmd_next_token(args, channel, pb, pb_grpc):
    stub = pb_grpc.LanguageModelStub(channel)
    knn, retro = mode_options(args, pb)
    request = pb.NextTokenRequest(text=args.text, top_n=args.top_n, mode=args.mode, knn=knn, retro=retro)
    r = stub.NextToken(request, timeout=args.timeout)
    tokens = [{"token": t.id, "text": t.piece.decode("utf-8", errors="replace"), "probability": t.probability,
               "logprob": t.logprob} for t in r.tokens]
    if args.json:
        print_json({"mode": r.mode, "tokens": tokens})
    else:
        for t in tokens:
            print("%8.4f  %s" % (t["probability"], json.dumps(t["text"], ensure_ascii=False)))
    return 0


STATS_FIELDS = ["documents", "chunks", "tokens", "vectors", "dim", "index_factory", "chunk_tokens",
                "continuation_tokens", "model_hash", "tokenizer_hash", "embedder", "faiss_version",
                "documents_added"]


def cmd_stats(args, channel, pb, pb_grpc):
    stub = pb_grpc.IndexStub(channel)
    r = stub.Stats(pb.StatsRequest(), timeout=args.timeout)
    stats = {name: getattr(r, name) for name in STATS_FIELDS}
    if args.json:
        print_json(stats)
    else:
        for name in STATS_FIELDS:
            print("%-20s %s" % (name, stats[name]))
    return 0


def read_documents(path, skip_if_exists, pb):
    """Returns one Document per non-blank line of a .jsonl file: {"id": ..., "text": ...,
    "metadata": {...}} ("metadata" optional; a missing id becomes FILE:LINE, as
    `rag build` does). Raises RuntimeError naming the line of a malformed one."""
    documents = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = "%s:%d" % (path, line_no)
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise RuntimeError("%s: not valid JSON (%s)" % (where, e))
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise RuntimeError('%s: expected a JSON object with a string field "text"' % where)
            doc_id = obj.get("id")
            doc_id = where if doc_id is None else str(doc_id)
            metadata = json.dumps(obj["metadata"]) if "metadata" in obj else ""
            documents.append(pb.Document(id=doc_id, text=obj["text"], metadata_json=metadata,
                                         skip_if_exists=skip_if_exists))
    return documents


def cmd_add(args, channel, pb, pb_grpc):
    stub = pb_grpc.IndexStub(channel)
    # The whole file is checked before anything is sent, so a malformed line
    # does not leave half of it added. Then the documents are client-streamed:
    # gRPC sends one message per document from the iterator, and each one is
    # durable on the server as it arrives (on a server error, e.g.
    # ALREADY_EXISTS, the message says how many were added before it).
    documents = read_documents(args.jsonl, args.skip_existing, pb)
    r = stub.AddDocuments(iter(documents), timeout=args.timeout)
    out = {"documents_added": r.documents_added, "chunks_added": r.chunks_added,
           "documents_skipped": r.documents_skipped, "documents": r.documents, "chunks": r.chunks}
    if args.json:
        print_json(out)
    else:
        print("added %(documents_added)d documents (%(chunks_added)d chunks), skipped %(documents_skipped)d; "
              "the index now holds %(documents)d documents, %(chunks)d chunks" % out)
    return 0


# ---------------------------------------------------------------------------


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (call credentials
    would need TLS; a loopback server may run without it)."""

    def __init__(self, token):
        self._metadata = ("authorization", "Bearer " + token)

    def _details(self, details):
        metadata = list(details.metadata or []) + [self._metadata]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready,
            details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


def open_channel(args):
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            channel = grpc.secure_channel(args.server, grpc.ssl_channel_credentials(root_certificates=f.read()))
    else:
        channel = grpc.insecure_channel(args.server)
    if args.auth_token_file:
        with open(args.auth_token_file) as f:
            token = f.read().strip()
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def build_parser():
    # Connection options are accepted before or after the subcommand:
    # SUPPRESS keeps a subparser from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=argparse.SUPPRESS,
                        help="address of a running `rag serve`, host:port (default: 127.0.0.1:50051)")
    common.add_argument("--stubs", default=argparse.SUPPRESS,
                        help="directory holding rag_pb2.py and rag_pb2_grpc.py (default: generate them)")
    common.add_argument("--proto-dir", default=argparse.SUPPRESS,
                        help="directory holding rag.proto, used without --stubs (default: the repository's)")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help="seconds to wait for the server and for each rpc (default: 60)")
    common.add_argument("--auth-token-file", default=argparse.SUPPRESS,
                        help="file with the bearer token the server expects (rag serve --auth-token-file)")
    common.add_argument("--tls-ca", default=argparse.SUPPRESS,
                        help="PEM root certificate that verifies a TLS server (rag serve --tls-cert)")

    parser = argparse.ArgumentParser(description="Example client for `rag serve` (gRPC API rag.v1).",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, func, help_text):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def add_mode_options(p):
        p.add_argument("--mode", default="lm", help="lm, knnlm, retro or infgram (default: lm)")
        p.add_argument("--lambda", dest="knn_lambda", type=float, default=None,
                       help="knnlm: weight of the neighbour distribution (knn.lambda; default: 0.25)")
        p.add_argument("--knn-temperature", type=float, default=None,
                       help="knnlm: temperature of the neighbour distribution (knn.temperature; default: 1)")
        p.add_argument("--knn-k", type=int, default=0, help="knnlm: neighbours per token (knn.k; default: 1024)")
        p.add_argument("--knn-nprobe", type=int, default=0,
                       help="knnlm: IVF lists of the datastore to visit (knn.nprobe; default: 4)")
        p.add_argument("--retrieval", default="", choices=["", "on", "off", "random"],
                       help="retro: where neighbours come from (retro.retrieval; default: on)")

    p = add("search", cmd_search, "nearest chunks of a text (Retrieval.Search)")
    p.add_argument("--text", required=True, help="query text")
    p.add_argument("-k", "--k", type=int, default=5, help="neighbours (default: 5)")
    p.add_argument("--nprobe", type=int, default=16, help="IVF lists to visit (default: 16)")
    p.add_argument("--exclude-doc", action="append", default=[], help="document id never to return (repeatable)")
    p.add_argument("--method", default="dense", choices=["dense", "bm25"],
                   help="dense (embeddings + FAISS) or bm25 (lexical) (default: dense)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("score", cmd_score, "log-likelihood and perplexity of a text (LanguageModel.Score)")
    p.add_argument("--text", required=True, help="text to score")
    add_mode_options(p)
    p.add_argument("--per-token", action="store_true", help="also show each token's log-probability")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("generate", cmd_generate, "continue a prompt, streaming tokens (LanguageModel.Generate)")
    p.add_argument("--prompt", required=True, help="prompt text (may be empty)")
    p.add_argument("--max-tokens", type=int, default=40, help="tokens to generate (default: 40)")
    add_mode_options(p)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely, 0 = all (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--ignore-eot", action="store_true", help="keep generating past the end-of-text token")
    p.add_argument("--json", action="store_true", help="print JSON once generation ends (no streaming)")

    p = add("next-token", cmd_next_token, "the most likely next tokens (LanguageModel.NextToken)")
    p.add_argument("--text", required=True, help="context text (may be empty)")
    p.add_argument("--top-n", type=int, default=10, help="tokens to show (default: 10)")
    add_mode_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("stats", cmd_stats, "counts and provenance of the served index (Index.Stats)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("add", cmd_add, "stream documents from a .jsonl file into the live index (Index.AddDocuments)")
    p.add_argument("--jsonl", required=True, help='file of {"id": ..., "text": ...} lines')
    p.add_argument("--skip-existing", action="store_true", help="skip ids already stored instead of failing")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name, default in (("server", "127.0.0.1:50051"), ("stubs", None), ("proto_dir", DEFAULT_PROTO_DIR),
                          ("timeout", 60.0), ("auth_token_file", None), ("tls_ca", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:
        pb, pb_grpc = load_stubs(args.stubs, args.proto_dir)
    except RuntimeError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1

    try:
        channel = open_channel(args)
    except OSError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            print("error: UNAVAILABLE: cannot reach a rag server at %s within %g s (is `rag serve` running?)"
                  % (args.server, args.timeout), file=sys.stderr)
            return 1
        try:
            return args.func(args, channel, pb, pb_grpc)
        except grpc.RpcError as e:
            # Raised call objects carry the status: code() is a grpc.StatusCode.
            print("error: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
            return 1
        except (OSError, RuntimeError) as e:
            print("error: %s" % e, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            # Leaving the `with` closes the channel, which cancels the call:
            # the server stops generating.
            print("\ninterrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The committed OpenAPI document (docs/openapi.json, the one the REST API serves: a test keeps them equal) is valid
# OpenAPI 3.1, checked by openapi-spec-validator (installed by scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TSDB_OPENAPI_PYTHONPATH:-}" ]; then
  # shellcheck disable=SC1091
  source "${TSDB_OPERATOR_CACHE:-$HOME/.cache/tsdb-operator}/env.sh"
fi
PYTHONPATH="$TSDB_OPENAPI_PYTHONPATH" python3 - docs/openapi.json <<'PY'
import json, sys
from openapi_spec_validator import validate
with open(sys.argv[1]) as f:
    document = json.load(f)
validate(document)
print(f"{sys.argv[1]}: valid OpenAPI {document['openapi']}, {len(document['paths'])} paths")
PY

#!/bin/sh
# One-shot setup of the object store for ldm-serve (docker-compose.yml, service `minio-init`,
# minio/mc image). Reads the same settings as the API and the workers, so the bucket it makes
# is the one they use. Idempotent: it runs on every `docker compose up`.
set -eu

: "${LDM_STORAGE_URL:?}" "${LDM_S3_ENDPOINT_URL:?}" "${LDM_RESULT_TTL:?}"
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"

# s3://<bucket>/<prefix>
location=${LDM_STORAGE_URL#s3://}
[ "$location" != "$LDM_STORAGE_URL" ] || { echo "LDM_STORAGE_URL is not s3://: $LDM_STORAGE_URL" >&2; exit 2; }
bucket=${location%%/*}
prefix=${location#"$bucket"}
prefix=${prefix#/}
prefix=${prefix%/}

mc alias set ldm "$LDM_S3_ENDPOINT_URL" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
# Private (the default for a new bucket): images leave only through presigned URLs.
mc mb --ignore-existing "ldm/$bucket"

# Safety net behind the service's own clean-up: whatever stays under the prefix expires one
# whole day after LDM_RESULT_TTL has run out (lifecycle rules count in days). Importing the
# whole configuration replaces the previous one, so reruns do not pile up rules.
days=$(( (LDM_RESULT_TTL + 86399) / 86400 + 1 ))
printf '{"Rules":[{"ID":"ldm-results-expiry","Status":"Enabled","Filter":{"Prefix":"%s"},"Expiration":{"Days":%d}}]}\n' \
    "${prefix:+$prefix/}" "$days" | mc ilm rule import "ldm/$bucket"

echo "bucket $bucket ready (prefix '${prefix}', objects expire after $days days)"

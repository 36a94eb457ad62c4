#!/bin/bash
# punisher agent bootstrap: the EC2 user data written by `punisher cluster up`.
#
# Template: deploy/cloud-init/user-data.sh in the punisher repository. Every placeholder is
# replaced by a single-quoted shell word when rendered. It holds the controller address,
# the agent token and the controller's certificate fingerprint, and never any AWS
# credential: the agent needs none (it only dials the controller).
#
# Order matters: the dead-man switch is armed first, so that an instance whose bootstrap
# fails still ends at its TTL (shutdown -> terminate, InstanceInitiatedShutdownBehavior).
set -euo pipefail

CLUSTER={{CLUSTER}}
CONTROLLER={{CONTROLLER}}
TOKEN={{TOKEN}}
FINGERPRINT={{FINGERPRINT}}
AGENT_URL={{AGENT_URL}}
TARGET_TRIPLE={{TARGET_TRIPLE}}
AGENT_SHA256={{AGENT_SHA256}}
TTL_MINUTES={{TTL_MINUTES}}
EXPIRES_AT={{EXPIRES_AT}}

log() { echo "punisher-bootstrap[$CLUSTER]: $*" | systemd-cat -t punisher-bootstrap 2>/dev/null || echo "$*"; }
die() { log "fatal: $*; powering off"; shutdown -h now "punisher bootstrap failed"; exit 1; }

# 1. Dead-man switch: power off at the TTL whatever happens below.
shutdown -h "+${TTL_MINUTES}" "punisher cluster ${CLUSTER} expired at ${EXPIRES_AT}" \
  || systemd-run --on-active="${TTL_MINUTES}m" --unit=punisher-ttl /usr/bin/systemctl poweroff \
  || die "cannot schedule the TTL shutdown"

# 2. The agent binary for this architecture, from the controller's HTTP endpoint.
case "$(uname -m)" in
  x86_64) triple=x86_64-unknown-linux-gnu ;;
  aarch64) triple=aarch64-unknown-linux-gnu ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac
[ "$triple" = "$TARGET_TRIPLE" ] || log "warning: launched for $TARGET_TRIPLE, running on $triple"
tmp=$(mktemp)
ok=0
for attempt in $(seq 1 60); do
  if curl -fsS --connect-timeout 5 --max-time 120 -o "$tmp" "${AGENT_URL}/${triple}"; then ok=1; break; fi
  log "agent download attempt $attempt failed; retrying in 10 s"
  sleep 10
done
[ "$ok" = 1 ] || die "cannot download ${AGENT_URL}/${triple}"

# 3. Verify its SHA-256. The launcher embeds the checksum when it could read it from the
#    controller at launch time; otherwise it is fetched next to the binary (that protects
#    against corruption, not against a hostile network: pass --agent-sha256 to pin it).
if [ -z "$AGENT_SHA256" ]; then
  AGENT_SHA256=$(curl -fsS --connect-timeout 5 --max-time 30 "${AGENT_URL}/${triple}.sha256" | cut -d' ' -f1) \
    || die "cannot download the agent checksum"
fi
echo "${AGENT_SHA256}  ${tmp}" | sha256sum -c --status - || die "agent binary checksum mismatch"
install -m 0755 "$tmp" /usr/local/bin/punisher
rm -f "$tmp"

# 4. Where this agent runs, from the instance metadata (IMDSv2), for its labels.
imds_token=$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" \
  http://169.254.169.254/latest/api/token 2>/dev/null || true)
md() { curl -fsS -H "X-aws-ec2-metadata-token: ${imds_token}" \
  "http://169.254.169.254/latest/meta-data/$1" 2>/dev/null || true; }
INSTANCE_ID=$(md instance-id)
ZONE=$(md placement/availability-zone)
REGION=$(md placement/region)

# 5. Settings (mode 0600: the token is a secret) and the service. `punisher agent` reads
#    them as its --controller, --token and --controller-fingerprint flags.
install -d -m 0755 /etc/punisher
umask 077
cat > /etc/punisher/agent.env <<ENV
PUNISHER_CONTROLLER=${CONTROLLER}
PUNISHER_TOKEN=${TOKEN}
PUNISHER_CONTROLLER_FINGERPRINT=${FINGERPRINT}
PUNISHER_CLUSTER=${CLUSTER}
PUNISHER_INSTANCE_ID=${INSTANCE_ID}
PUNISHER_ZONE=${ZONE}
PUNISHER_REGION=${REGION}
ENV
umask 022
cat > /etc/systemd/system/punisher-agent.service <<'UNIT'
{{SYSTEMD_UNIT}}
UNIT
# On EC2 a clean agent exit (TTL, spot notice) ends the instance: nothing idles and bills.
install -d /etc/systemd/system/punisher-agent.service.d
cat > /etc/systemd/system/punisher-agent.service.d/ec2.conf <<'DROPIN'
[Unit]
OnSuccess=poweroff.target
DROPIN
systemctl daemon-reload
systemctl enable --now punisher-agent.service
log "agent started for controller ${CONTROLLER}"

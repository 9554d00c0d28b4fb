#!/usr/bin/env bash
# Install the layerfleet agent on a Raspberry Pi (64-bit Raspberry Pi OS, Python 3.11-3.13)
# as a systemd service. Run as root from a checkout (or pass the checkout/wheel path):
#
#   sudo deploy/install-agent.sh [SOURCE] [--controller HOST:PORT --join-token TOKEN]
#                                [--listen HOST:PORT --insecure] [--print-config]
#
# The agent listens on 127.0.0.1:50051 unless you say otherwise: until mutual TLS lands,
# anyone who can reach its port can push shards and read activations, so serving the
# network takes both --listen (e.g. 0.0.0.0:50051) and --insecure, on a LAN you trust.
#
# Installs into /opt/layerfleet/agent (a venv with the `agent` extra only: no TensorFlow),
# writes /etc/layerfleet/agent.toml once (never overwrites your edits), keeps secrets in the
# 0600 /etc/layerfleet/agent.env, raises the socket buffer limits (/etc/sysctl.d), and
# enables layerfleet-agent.service.
set -euo pipefail

src="$(cd "$(dirname "$0")/.." && pwd)"
if [[ $# -gt 0 && "$1" != --* ]]; then src="$1"; shift; fi
controller="" token="" listen="127.0.0.1:50051" insecure="false" print_config=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --controller) controller="$2"; shift 2 ;;
    --join-token) token="$2"; shift 2 ;;
    --listen) listen="$2"; shift 2 ;;
    --insecure) insecure="true"; shift ;;
    --print-config) print_config="yes"; shift ;;
    *) echo "install-agent.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
agent_config() {
  cat <<TOML
# layerfleet agent settings; flags and LAYERFLEET_* environment variables override these.
listen = "$listen"
# A non-loopback listen address needs insecure = true until mutual TLS lands: anyone who
# can reach the port could push shards and read activations. Only on a LAN you trust.
insecure = $insecure
# Activations arrive on a raw-TCP data port beside gRPC: "auto" is the gRPC port + 1
# (50052). Open both ports to the controller and the other agents, or set "off".
data_port = "auto"
TOML
}
# --print-config: show the agent.toml this would write, change nothing.
if [[ -n "$print_config" ]]; then agent_config; exit 0; fi

[[ $EUID -eq 0 ]] || { echo "install-agent.sh: run as root (it installs a systemd unit)" >&2; exit 1; }

prefix=/opt/layerfleet/agent
python3 -m venv "$prefix"
"$prefix/bin/pip" install --upgrade pip >/dev/null
"$prefix/bin/pip" install "${src}[agent]"

install -d -m 0755 /etc/layerfleet
if [[ ! -e /etc/layerfleet/agent.toml ]]; then
  agent_config > /etc/layerfleet/agent.toml
fi
umask 077
{
  [[ -n "$controller" ]] && echo "LAYERFLEET_CONTROLLER=$controller"
  [[ -n "$token" ]] && echo "LAYERFLEET_JOIN_TOKEN=$token"
  true
} > /etc/layerfleet/agent.env
chmod 0600 /etc/layerfleet/agent.env

# The data port asks for 4 MiB socket buffers so a whole activation fits in flight while the
# next agent computes; Raspberry Pi OS caps them at 208 KiB unless these limits are raised.
cat > /etc/sysctl.d/60-layerfleet.conf <<SYSCTL
net.core.rmem_max = 4194304
net.core.wmem_max = 4194304
SYSCTL
sysctl -q -p /etc/sysctl.d/60-layerfleet.conf

install -m 0644 "$src/systemd/layerfleet-agent.service" /etc/systemd/system/layerfleet-agent.service
systemctl daemon-reload
systemctl enable --now layerfleet-agent.service
systemctl --no-pager status layerfleet-agent.service | head -n 5

#!/bin/sh
# Moves a Hetzner Cloud floating IP to this server when it becomes VRRP MASTER.
# Clouds route a floating IP to one server by API, not by ARP, so keepalived
# alone cannot move it. Wire it in lbmesh.toml:
#
#   [keepalived]
#   on-master = ["/etc/lbmesh/hooks/hetzner-floating-ip.sh"]
#
# /etc/lbmesh/hetzner.env (mode 0600) holds:
#   HCLOUD_TOKEN=...          an API token with read/write access
#   FLOATING_IP_ID=12345      the floating IP
#   SERVER_ID=67890           this server
# lbmesh runs the hook with LBMESH_VRRP_STATE and LBMESH_VRRP_INSTANCE set,
# logs its result, and kills it after 60 s.
set -eu
. /etc/lbmesh/hetzner.env
[ "${LBMESH_VRRP_STATE:-MASTER}" = MASTER ] || exit 0
curl -fsS --max-time 20 --retry 3 \
    -X POST \
    -H "Authorization: Bearer $HCLOUD_TOKEN" \
    -H "Content-Type: application/json" \
    -d "{\"server\": $SERVER_ID}" \
    "https://api.hetzner.cloud/v1/floating_ips/$FLOATING_IP_ID/actions/assign" >/dev/null
echo "floating IP $FLOATING_IP_ID assigned to server $SERVER_ID"

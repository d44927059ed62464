#!/bin/sh
# Moves a DigitalOcean reserved IP to this droplet when it becomes VRRP MASTER.
# Wire it in lbmesh.toml:
#
#   [keepalived]
#   on-master = ["/etc/lbmesh/hooks/digitalocean-reserved-ip.sh"]
#
# /etc/lbmesh/digitalocean.env (mode 0600) holds:
#   DO_TOKEN=...              an API token with write access
#   RESERVED_IP=203.0.113.10  the reserved IP
# The droplet id comes from the droplet's metadata service.
set -eu
. /etc/lbmesh/digitalocean.env
[ "${LBMESH_VRRP_STATE:-MASTER}" = MASTER ] || exit 0
DROPLET_ID=$(curl -fsS --max-time 5 http://169.254.169.254/metadata/v1/id)
curl -fsS --max-time 20 --retry 3 \
    -X POST \
    -H "Authorization: Bearer $DO_TOKEN" \
    -H "Content-Type: application/json" \
    -d "{\"type\": \"assign\", \"droplet_id\": $DROPLET_ID}" \
    "https://api.digitalocean.com/v2/reserved_ips/$RESERVED_IP/actions" >/dev/null
echo "reserved IP $RESERVED_IP assigned to droplet $DROPLET_ID"

#!/usr/bin/env bash
# The single-VM design that lbmesh replaces, rebuilt as the benchmarks'
# baseline: webhook runs this once per phone-home call, with the state
# directory as working directory and the arguments
#   NAME FRONTEND_PORT BACKEND_PORT DST_IP ACTION
# It writes (or removes) the include file of the frontend port, concatenates
# header.cfg and every include into a candidate, checks it with `haproxy -c`,
# installs it and reloads HAProxy (USR2 to the master in haproxy.pid) when it
# differs from the live haproxy.cfg. Like the design it stands for, it takes
# no lock: concurrent runs share the candidate file.
set -u
name=$1 frontend_port=$2 backend_port=$3 dst_ip=$4 action=$5

case $frontend_port in
'' | *[!0-9]*) exit 2 ;;
esac
include=conf.d/$frontend_port.inc

case $action in
add)
    cat >"$include" <<INC
# $name
frontend ${frontend_port}_frontend
    bind 127.0.0.1:$frontend_port
    mode tcp
    default_backend ${frontend_port}_backend

backend ${frontend_port}_backend
    mode tcp
    balance roundrobin
    stick-table type ip size 200k expire 30m
    stick on src
    server s1 $dst_ip:$backend_port
INC
    ;;
delete) rm -f "$include" ;;
*) exit 2 ;;
esac

cat header.cfg conf.d/*.inc >haproxy.cfg.candidate 2>/dev/null
if haproxy -c -q -f haproxy.cfg.candidate >/dev/null 2>&1; then
    if ! cmp -s haproxy.cfg.candidate haproxy.cfg; then
        cp haproxy.cfg.candidate haproxy.cfg
        kill -USR2 "$(cat haproxy.pid)"
    fi
fi

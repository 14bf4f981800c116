// SPDX-License-Identifier: GPL-2.0
/* generated from kmod/spec/ntm.yaml by scripts/gen-netlink; do not edit */

#include <net/netlink.h>
#include <net/genetlink.h>

#include "ntm_nl_gen.h"

/* Integer value ranges */
static const struct netlink_range_validation ntm_a_idle_timeout_ms_range = {
	.max = 86400000ULL,
};

/* Nested attribute sets */
const struct nla_policy ntm_tunnel_nl_policy[NTM_A_TUNNEL_MAX + 1] = {
	[NTM_A_TUNNEL_LOCAL_ID] = NLA_POLICY_MIN(NLA_U32, 1),
	[NTM_A_TUNNEL_REMOTE_ID] = { .type = NLA_U32, },
	[NTM_A_TUNNEL_VIP4] = { .type = NLA_BE32, },
	[NTM_A_TUNNEL_VIP6] = NLA_POLICY_EXACT_LEN(16),
	[NTM_A_TUNNEL_ENDPOINT_IP4] = { .type = NLA_BE32, },
	[NTM_A_TUNNEL_ENDPOINT_IP6] = NLA_POLICY_EXACT_LEN(16),
	[NTM_A_TUNNEL_ENDPOINT_PORT] = NLA_POLICY_MIN(NLA_BE16, 1),
	[NTM_A_TUNNEL_SEND_KEY] = NLA_POLICY_EXACT_LEN(NTM_KEY_LEN),
	[NTM_A_TUNNEL_RECV_KEY] = NLA_POLICY_EXACT_LEN(NTM_KEY_LEN),
	[NTM_A_TUNNEL_LABEL] = { .type = NLA_NUL_STRING, .len = NTM_LABEL_MAX_LEN, },
	[NTM_A_TUNNEL_IDLE_MS] = { .type = NLA_U32, },
	[NTM_A_TUNNEL_TX_PACKETS] = { .type = NLA_UINT, },
	[NTM_A_TUNNEL_TX_BYTES] = { .type = NLA_UINT, },
	[NTM_A_TUNNEL_RX_PACKETS] = { .type = NLA_UINT, },
	[NTM_A_TUNNEL_RX_BYTES] = { .type = NLA_UINT, },
	[NTM_A_TUNNEL_RX_DROPPED] = { .type = NLA_UINT, },
	[NTM_A_TUNNEL_REASON] = { .type = NLA_U32, },
};

/*
 * The tunnel attributes a request may carry. The others (idle-ms, the counters, reason) are
 * reported by the module and refused in requests.
 */
const struct nla_policy ntm_tunnel_input_nl_policy[NTM_A_TUNNEL_MAX + 1] = {
	[NTM_A_TUNNEL_LOCAL_ID] = NLA_POLICY_MIN(NLA_U32, 1),
	[NTM_A_TUNNEL_REMOTE_ID] = { .type = NLA_U32, },
	[NTM_A_TUNNEL_VIP4] = { .type = NLA_BE32, },
	[NTM_A_TUNNEL_VIP6] = NLA_POLICY_EXACT_LEN(16),
	[NTM_A_TUNNEL_ENDPOINT_IP4] = { .type = NLA_BE32, },
	[NTM_A_TUNNEL_ENDPOINT_IP6] = NLA_POLICY_EXACT_LEN(16),
	[NTM_A_TUNNEL_ENDPOINT_PORT] = NLA_POLICY_MIN(NLA_BE16, 1),
	[NTM_A_TUNNEL_SEND_KEY] = NLA_POLICY_EXACT_LEN(NTM_KEY_LEN),
	[NTM_A_TUNNEL_RECV_KEY] = NLA_POLICY_EXACT_LEN(NTM_KEY_LEN),
	[NTM_A_TUNNEL_LABEL] = { .type = NLA_NUL_STRING, .len = NTM_LABEL_MAX_LEN, },
	[NTM_A_TUNNEL_IDLE_MS ... NTM_A_TUNNEL_REASON] = {
		.type = NLA_REJECT,
		.reject_message = "ntm: attribute is reported by the module, not set",
	},
};

/* NTM_CMD_DEV_SET - do */
static const struct nla_policy ntm_dev_set_nl_policy[NTM_A_MAX + 1] = {
	[NTM_A_IFINDEX] = { .type = NLA_U32, },
	[NTM_A_SOCK_FD4] = { .type = NLA_S32, },
	[NTM_A_SOCK_FD6] = { .type = NLA_S32, },
	[NTM_A_IDLE_TIMEOUT_MS] = NLA_POLICY_FULL_RANGE(NLA_U32, &ntm_a_idle_timeout_ms_range),
};

/* NTM_CMD_DEV_GET - do */
static const struct nla_policy ntm_dev_get_nl_policy[NTM_A_MAX + 1] = {
	[NTM_A_IFINDEX] = { .type = NLA_U32, },
};

/* NTM_CMD_TUNNEL_NEW - do */
static const struct nla_policy ntm_tunnel_new_nl_policy[NTM_A_MAX + 1] = {
	[NTM_A_IFINDEX] = { .type = NLA_U32, },
	[NTM_A_TUNNEL] = NLA_POLICY_NESTED(ntm_tunnel_input_nl_policy),
};

/* NTM_CMD_TUNNEL_SET - do */
static const struct nla_policy ntm_tunnel_set_nl_policy[NTM_A_MAX + 1] = {
	[NTM_A_IFINDEX] = { .type = NLA_U32, },
	[NTM_A_TUNNEL] = NLA_POLICY_NESTED(ntm_tunnel_input_nl_policy),
};

/* NTM_CMD_TUNNEL_GET - do */
static const struct nla_policy ntm_tunnel_get_do_nl_policy[NTM_A_MAX + 1] = {
	[NTM_A_IFINDEX] = { .type = NLA_U32, },
	[NTM_A_TUNNEL] = NLA_POLICY_NESTED(ntm_tunnel_nl_policy),
};

/* NTM_CMD_TUNNEL_GET - dump */
static const struct nla_policy ntm_tunnel_get_dump_nl_policy[NTM_A_MAX + 1] = {
	[NTM_A_IFINDEX] = { .type = NLA_U32, },
};

/* NTM_CMD_TUNNEL_DEL - do */
static const struct nla_policy ntm_tunnel_del_nl_policy[NTM_A_MAX + 1] = {
	[NTM_A_IFINDEX] = { .type = NLA_U32, },
	[NTM_A_TUNNEL] = NLA_POLICY_NESTED(ntm_tunnel_input_nl_policy),
};

/* NTM_CMD_TUNNEL_KEEPALIVE - do */
static const struct nla_policy ntm_tunnel_keepalive_nl_policy[NTM_A_MAX + 1] = {
	[NTM_A_IFINDEX] = { .type = NLA_U32, },
	[NTM_A_TUNNEL] = NLA_POLICY_NESTED(ntm_tunnel_input_nl_policy),
};

/* The op table: do and dump handlers, by command */
const struct genl_split_ops ntm_nl_ops[8] = {
	{
		.cmd		= NTM_CMD_DEV_SET,
		.doit		= ntm_nl_dev_set_doit,
		.policy		= ntm_dev_set_nl_policy,
		.maxattr	= NTM_A_MAX,
		.flags		= GENL_ADMIN_PERM | GENL_CMD_CAP_DO,
	},
	{
		.cmd		= NTM_CMD_DEV_GET,
		.doit		= ntm_nl_dev_get_doit,
		.policy		= ntm_dev_get_nl_policy,
		.maxattr	= NTM_A_MAX,
		.flags		= GENL_ADMIN_PERM | GENL_CMD_CAP_DO,
	},
	{
		.cmd		= NTM_CMD_TUNNEL_NEW,
		.doit		= ntm_nl_tunnel_new_doit,
		.policy		= ntm_tunnel_new_nl_policy,
		.maxattr	= NTM_A_MAX,
		.flags		= GENL_ADMIN_PERM | GENL_CMD_CAP_DO,
	},
	{
		.cmd		= NTM_CMD_TUNNEL_SET,
		.doit		= ntm_nl_tunnel_set_doit,
		.policy		= ntm_tunnel_set_nl_policy,
		.maxattr	= NTM_A_MAX,
		.flags		= GENL_ADMIN_PERM | GENL_CMD_CAP_DO,
	},
	{
		.cmd		= NTM_CMD_TUNNEL_GET,
		.doit		= ntm_nl_tunnel_get_doit,
		.policy		= ntm_tunnel_get_do_nl_policy,
		.maxattr	= NTM_A_MAX,
		.flags		= GENL_ADMIN_PERM | GENL_CMD_CAP_DO,
	},
	{
		.cmd		= NTM_CMD_TUNNEL_GET,
		.dumpit		= ntm_nl_tunnel_get_dumpit,
		.policy		= ntm_tunnel_get_dump_nl_policy,
		.maxattr	= NTM_A_MAX,
		.flags		= GENL_ADMIN_PERM | GENL_CMD_CAP_DUMP,
	},
	{
		.cmd		= NTM_CMD_TUNNEL_DEL,
		.doit		= ntm_nl_tunnel_del_doit,
		.policy		= ntm_tunnel_del_nl_policy,
		.maxattr	= NTM_A_MAX,
		.flags		= GENL_ADMIN_PERM | GENL_CMD_CAP_DO,
	},
	{
		.cmd		= NTM_CMD_TUNNEL_KEEPALIVE,
		.doit		= ntm_nl_tunnel_keepalive_doit,
		.policy		= ntm_tunnel_keepalive_nl_policy,
		.maxattr	= NTM_A_MAX,
		.flags		= GENL_ADMIN_PERM | GENL_CMD_CAP_DO,
	},
};

const struct genl_multicast_group ntm_nl_mcgrps[1] = {
	[NTM_NLGRP_EVENTS] = { NTM_MCGRP_EVENTS, .flags = GENL_MCAST_CAP_NET_ADMIN, },
};

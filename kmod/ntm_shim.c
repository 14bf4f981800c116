// SPDX-License-Identifier: GPL-2.0
/*
 * ntm_shim.c - the C half of ntm.ko's binding layer.
 *
 * It holds only what Rust cannot express against the 6.12 `kernel` crate: one-line wrappers
 * for static inline helpers and macros, the static tables whose layout depends on the kernel
 * config (net_device_ops, rtnl_link_ops, the generic netlink family, the UDP tunnel socket
 * configuration), route lookups on C structs, and trampolines that forward every callback to
 * Rust (ntm_rs_*). The family's policies and op table are generated from kmod/spec/ntm.yaml
 * (ntm_nl_gen.c); its handlers are Rust. All decisions are taken in Rust; see ntm_shim.h.
 */

#include <linux/etherdevice.h>
#include <linux/if_arp.h>
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/skbuff.h>
#include <linux/string.h>
#include <linux/workqueue.h>
#include <net/dst_cache.h>
#include <net/genetlink.h>
#include <net/gro_cells.h>
#include <net/ip.h>
#include <net/ip_tunnels.h>
#include <net/ipv6.h>
#include <net/ipv6_stubs.h>
#include <net/route.h>
#include <net/rtnetlink.h>
#include <net/sock.h>
#include <net/udp.h>
#include <net/udp_tunnel.h>

#include "ntm_nl_gen.h"
#include "ntm_shim.h"

/* Outer IPv6 header (the larger one), UDP header, data header, then the tag. */
#define NTM_DATA_HEADER 16
#define NTM_TAG_LEN 16
#define NTM_OVERHEAD (sizeof(struct ipv6hdr) + sizeof(struct udphdr) + NTM_DATA_HEADER + NTM_TAG_LEN)
/* Segmentation and checksums are done in software, per segment, before sealing (xmit). */
#define NTM_FEATURES (NETIF_F_HW_CSUM | NETIF_F_RXCSUM | NETIF_F_SG | NETIF_F_FRAGLIST | \
		      NETIF_F_GSO_SOFTWARE | NETIF_F_HIGHDMA)
#define NTM_HEADROOM (NTM_DATA_HEADER + sizeof(struct udphdr) + sizeof(struct ipv6hdr) + LL_MAX_HEADER)

struct ntm_priv {
	struct net_device *dev;
	void *state; /* the Rust device (device.rs), owned by Rust */
	struct delayed_work sweep;
	struct gro_cells gro;
};

/* ---- locking, RCU, time ---- */

void ntm_shim_rcu_read_lock(void) { rcu_read_lock(); }
void ntm_shim_rcu_read_unlock(void) { rcu_read_unlock(); }
void ntm_shim_local_bh_disable(void) { local_bh_disable(); }
void ntm_shim_local_bh_enable(void) { local_bh_enable(); }
void ntm_shim_spin_lock_bh(struct spinlock *lock) { spin_lock_bh(lock); }
void ntm_shim_spin_unlock_bh(struct spinlock *lock) { spin_unlock_bh(lock); }
void ntm_shim_cond_resched(void) { cond_resched(); }
unsigned long ntm_shim_jiffies(void) { return jiffies; }
unsigned long ntm_shim_msecs_to_jiffies(u32 ms) { return msecs_to_jiffies(ms); }
u32 ntm_shim_jiffies_to_msecs(unsigned long j) { return jiffies_to_msecs(j); }
void ntm_shim_memzero_explicit(void *p, size_t len) { memzero_explicit(p, len); }

/* ---- the net_device ---- */

enum ntm_stat {
	NTM_STAT_TX_DROPPED,
	NTM_STAT_TX_ERRORS,
	NTM_STAT_RX_DROPPED,
	NTM_STAT_RX_ERRORS,
	NTM_STAT_RX_LENGTH_ERRORS,
	NTM_STAT_RX_FRAME_ERRORS,
	NTM_STAT_TX_CARRIER_ERRORS,
};

static struct rtnl_link_ops ntm_link_ops;

void *ntm_shim_dev_state(struct net_device *dev)
{
	return ((struct ntm_priv *)netdev_priv(dev))->state;
}

void ntm_shim_dev_set_state(struct net_device *dev, void *state)
{
	((struct ntm_priv *)netdev_priv(dev))->state = state;
}

struct net_device *ntm_shim_dev_get(struct net *net, u32 ifindex)
{
	struct net_device *dev;

	if (!ifindex || ifindex > INT_MAX)
		return NULL;
	dev = dev_get_by_index(net, ifindex);
	if (dev && dev->rtnl_link_ops != &ntm_link_ops) {
		dev_put(dev);
		dev = NULL;
	}
	return dev;
}

void ntm_shim_dev_put(struct net_device *dev) { dev_put(dev); }
struct net *ntm_shim_dev_net(struct net_device *dev) { return dev_net(dev); }
int ntm_shim_dev_ifindex(struct net_device *dev) { return dev->ifindex; }
void ntm_shim_dev_rx_add(struct net_device *dev, unsigned int len) { dev_sw_netstats_rx_add(dev, len); }

void ntm_shim_dev_stat_inc(struct net_device *dev, int which)
{
	switch (which) {
	case NTM_STAT_TX_DROPPED: DEV_STATS_INC(dev, tx_dropped); break;
	case NTM_STAT_TX_ERRORS: DEV_STATS_INC(dev, tx_errors); break;
	case NTM_STAT_RX_DROPPED: DEV_STATS_INC(dev, rx_dropped); break;
	case NTM_STAT_RX_ERRORS: DEV_STATS_INC(dev, rx_errors); break;
	case NTM_STAT_RX_LENGTH_ERRORS:
		DEV_STATS_INC(dev, rx_errors);
		DEV_STATS_INC(dev, rx_length_errors);
		break;
	case NTM_STAT_RX_FRAME_ERRORS:
		DEV_STATS_INC(dev, rx_errors);
		DEV_STATS_INC(dev, rx_frame_errors);
		break;
	case NTM_STAT_TX_CARRIER_ERRORS:
		DEV_STATS_INC(dev, tx_errors);
		DEV_STATS_INC(dev, tx_carrier_errors);
		break;
	}
}

void ntm_shim_sweep_arm(struct net_device *dev, unsigned long delay, bool force)
{
	struct ntm_priv *priv = netdev_priv(dev);

	if (force)
		mod_delayed_work(system_power_efficient_wq, &priv->sweep, delay);
	else
		queue_delayed_work(system_power_efficient_wq, &priv->sweep, delay);
}

void ntm_shim_sweep_cancel(struct net_device *dev)
{
	cancel_delayed_work_sync(&((struct ntm_priv *)netdev_priv(dev))->sweep);
}

static void ntm_sweep_work(struct work_struct *work)
{
	struct ntm_priv *priv = container_of(to_delayed_work(work), struct ntm_priv, sweep);

	ntm_rs_sweep(priv->dev);
}

static int ntm_open(struct net_device *dev) { return ntm_rs_dev_open(dev); }
static int ntm_stop(struct net_device *dev) { return ntm_rs_dev_stop(dev); }

/*
 * The stack hands the device GSO super-packets (NETIF_F_GSO_SOFTWARE): they are cut here into
 * MTU-sized segments, each sealed on its own by ntm_rs_xmit, which always consumes its skb.
 * Checksums left partial (NETIF_F_HW_CSUM) are completed per segment before sealing.
 */
static netdev_tx_t ntm_xmit(struct sk_buff *skb, struct net_device *dev)
{
	struct sk_buff *segs, *next;

	if (!skb_is_gso(skb)) {
		skb_mark_not_on_list(skb);
		ntm_rs_xmit(skb, dev);
		return NETDEV_TX_OK;
	}
	segs = skb_gso_segment(skb, 0);
	if (IS_ERR_OR_NULL(segs)) {
		DEV_STATS_INC(dev, tx_errors);
		kfree_skb(skb);
		return NETDEV_TX_OK;
	}
	consume_skb(skb);
	skb_list_walk_safe(segs, skb, next) {
		skb_mark_not_on_list(skb);
		ntm_rs_xmit(skb, dev);
	}
	return NETDEV_TX_OK;
}

static void ntm_uninit(struct net_device *dev)
{
	struct ntm_priv *priv = netdev_priv(dev);

	ntm_rs_dev_uninit(dev); /* releases the sockets: no more receive after this */
	gro_cells_destroy(&priv->gro);
}

static void ntm_destruct(struct net_device *dev)
{
	ntm_rs_dev_free(dev);
}

static const struct net_device_ops ntm_netdev_ops = {
	.ndo_open = ntm_open,
	.ndo_stop = ntm_stop,
	.ndo_uninit = ntm_uninit,
	.ndo_start_xmit = ntm_xmit,
};

static const struct device_type ntm_device_type = { .name = KBUILD_MODNAME };

static void ntm_setup(struct net_device *dev)
{
	struct ntm_priv *priv = netdev_priv(dev);

	dev->netdev_ops = &ntm_netdev_ops;
	dev->header_ops = &ip_tunnel_header_ops;
	dev->hard_header_len = 0;
	dev->addr_len = 0;
	dev->needed_headroom = NTM_HEADROOM;
	dev->needed_tailroom = NTM_TAG_LEN;
	dev->type = ARPHRD_NONE;
	dev->flags = IFF_POINTOPOINT | IFF_NOARP;
	dev->priv_flags |= IFF_NO_QUEUE;
	dev->lltx = true;
	dev->features |= NTM_FEATURES;
	dev->hw_features |= NTM_FEATURES;
	dev->hw_enc_features |= NTM_FEATURES;
	dev->mtu = ETH_DATA_LEN - NTM_OVERHEAD;
	dev->min_mtu = IPV4_MIN_MTU;
	dev->max_mtu = IP_MAX_MTU - NTM_OVERHEAD;
	dev->pcpu_stat_type = NETDEV_PCPU_STAT_TSTATS;
	dev->needs_free_netdev = true;
	dev->priv_destructor = ntm_destruct;
	SET_NETDEV_DEVTYPE(dev, &ntm_device_type);

	priv->dev = dev;
	INIT_DELAYED_WORK(&priv->sweep, ntm_sweep_work);
}

static int ntm_newlink(struct net *src_net, struct net_device *dev, struct nlattr *tb[],
		       struct nlattr *data[], struct netlink_ext_ack *extack)
{
	struct ntm_priv *priv = netdev_priv(dev);
	int err;

	err = gro_cells_init(&priv->gro, dev);
	if (err)
		return err;
	err = ntm_rs_dev_new(dev);
	if (err)
		goto err_gro;
	err = register_netdevice(dev);
	if (err)
		goto err_state;
	return 0;

err_state:
	/* Both are idempotent: register_netdevice() may have run uninit and the destructor. */
	ntm_rs_dev_free(dev);
err_gro:
	gro_cells_destroy(&priv->gro);
	return err;
}

static struct rtnl_link_ops ntm_link_ops __read_mostly = {
	.kind = KBUILD_MODNAME,
	.priv_size = sizeof(struct ntm_priv),
	.setup = ntm_setup,
	.newlink = ntm_newlink,
};

int ntm_shim_link_register(void) { return rtnl_link_register(&ntm_link_ops); }
void ntm_shim_link_unregister(void) { rtnl_link_unregister(&ntm_link_ops); }

/* ---- sk_buff ---- */

void ntm_shim_kfree_skb(struct sk_buff *skb) { kfree_skb(skb); }
void ntm_shim_consume_skb(struct sk_buff *skb) { consume_skb(skb); }
unsigned int ntm_shim_skb_len(const struct sk_buff *skb) { return skb->len; }
unsigned int ntm_shim_skb_headlen(const struct sk_buff *skb) { return skb_headlen(skb); }
u8 *ntm_shim_skb_data(const struct sk_buff *skb) { return skb->data; }
bool ntm_shim_skb_may_pull(struct sk_buff *skb, unsigned int len) { return pskb_may_pull(skb, len); }
void ntm_shim_skb_pull(struct sk_buff *skb, unsigned int len) { __skb_pull(skb, len); }
/* The checked variants: they panic rather than write outside the buffer. */
void ntm_shim_skb_push(struct sk_buff *skb, unsigned int len) { skb_push(skb, len); }
void ntm_shim_skb_put(struct sk_buff *skb, unsigned int len) { skb_put(skb, len); }
int ntm_shim_skb_trim(struct sk_buff *skb, unsigned int len) { return pskb_trim(skb, len); }

/* Linear and writable from data to tail (receive: decrypt in place). */
int ntm_shim_skb_linearize_writable(struct sk_buff *skb)
{
	return skb_ensure_writable(skb, skb->len);
}

/* Transmit: own, linear, writable, with room for the outer headers and the tag. */
struct sk_buff *ntm_shim_skb_tx_prepare(struct sk_buff *skb, unsigned int headroom,
					unsigned int tailroom)
{
	int nhead, ntail;

	skb = skb_share_check(skb, GFP_ATOMIC);
	if (unlikely(!skb))
		return NULL;
	if (unlikely(skb_linearize(skb)))
		goto drop;
	if (skb->ip_summed == CHECKSUM_PARTIAL && unlikely(skb_checksum_help(skb)))
		goto drop;
	nhead = max_t(int, 0, (int)headroom - (int)skb_headroom(skb));
	ntail = max_t(int, 0, (int)tailroom - (int)skb_tailroom(skb));
	if (nhead || ntail || skb_cloned(skb)) {
		if (pskb_expand_head(skb, SKB_DATA_ALIGN(nhead), ntail, GFP_ATOMIC))
			goto drop;
	}
	skb_dst_drop(skb);
	skb->ip_summed = CHECKSUM_NONE;
	skb->encapsulation = 0;
	return skb;
drop:
	kfree_skb(skb);
	return NULL;
}

struct sk_buff *ntm_shim_skb_alloc(unsigned int headroom, unsigned int len)
{
	struct sk_buff *skb = alloc_skb(headroom + len, GFP_KERNEL);

	if (unlikely(!skb))
		return NULL;
	skb_reserve(skb, headroom);
	skb_put_zero(skb, len);
	return skb;
}

/* The outer source of a received datagram: 4 or 6 (address in addr), or 0. */
int ntm_shim_skb_outer_source(const struct sk_buff *skb, u8 addr[16], u16 *port)
{
	*port = ntohs(udp_hdr(skb)->source);
	switch (ip_hdr(skb)->version) {
	case 4:
		memcpy(addr, &ip_hdr(skb)->saddr, 4);
		return 4;
	case 6:
		memcpy(addr, &ipv6_hdr(skb)->saddr, 16);
		return 6;
	}
	return 0;
}

/* Hands a decrypted inner packet (at skb->data, already trimmed) to the stack. */
int ntm_shim_rx_deliver(struct net_device *dev, struct sk_buff *skb, bool ipv6)
{
	struct ntm_priv *priv = netdev_priv(dev);

	skb_orphan(skb);
	skb_scrub_packet(skb, !net_eq(dev_net(dev), dev_net(skb->dev)));
	skb->dev = dev;
	skb->protocol = ipv6 ? htons(ETH_P_IPV6) : htons(ETH_P_IP);
	skb->mac_len = 0;
	skb_reset_mac_header(skb);
	skb_reset_network_header(skb);
	skb_reset_transport_header(skb);
	/* The AEAD tag authenticated every byte: no checksum needs checking again. */
	skb->ip_summed = CHECKSUM_UNNECESSARY;
	skb->csum_level = ~0;
	skb->encapsulation = 0;
	return gro_cells_receive(&priv->gro, skb);
}

/* ---- routes to endpoints, cached per tunnel (dst_cache, the WireGuard model) ---- */

struct dst_cache *ntm_shim_dst_cache_new(void)
{
	struct dst_cache *c = kzalloc(sizeof(*c), GFP_KERNEL);

	if (!c)
		return NULL;
	if (dst_cache_init(c, GFP_KERNEL)) {
		kfree(c);
		return NULL;
	}
	return c;
}

void ntm_shim_dst_cache_free(struct dst_cache *c)
{
	dst_cache_destroy(c);
	kfree(c);
}

void ntm_shim_dst_cache_reset(struct dst_cache *c) { dst_cache_reset(c); }

int ntm_shim_route(struct net_device *dev, struct sock *sk, struct dst_cache *c, int family,
		   const u8 daddr[16], u16 dport, u8 saddr[16], struct dst_entry **dst, bool *fresh)
{
	*fresh = false;
	if (family == 4) {
		struct flowi4 fl = {
			.saddr = inet_sk(sk)->inet_saddr,
			.fl4_sport = inet_sk(sk)->inet_sport,
			.fl4_dport = htons(dport),
			.flowi4_mark = READ_ONCE(sk->sk_mark),
			.flowi4_oif = READ_ONCE(sk->sk_bound_dev_if),
			.flowi4_proto = IPPROTO_UDP,
		};
		struct rtable *rt = dst_cache_get_ip4(c, &fl.saddr);

		if (!rt) {
			memcpy(&fl.daddr, daddr, 4);
			rt = ip_route_output_flow(sock_net(sk), &fl, sk);
			if (IS_ERR(rt))
				return PTR_ERR(rt);
			if (unlikely(rt->dst.dev == dev)) {
				ip_rt_put(rt);
				return -ELOOP;
			}
			*fresh = true;
		}
		memcpy(saddr, &fl.saddr, 4);
		*dst = &rt->dst;
		return 0;
	}
#if IS_ENABLED(CONFIG_IPV6)
	if (family == 6) {
		struct flowi6 fl = {
			.saddr = sk->sk_v6_rcv_saddr,
			.fl6_sport = inet_sk(sk)->inet_sport,
			.fl6_dport = htons(dport),
			.flowi6_mark = READ_ONCE(sk->sk_mark),
			.flowi6_oif = READ_ONCE(sk->sk_bound_dev_if),
			.flowi6_proto = IPPROTO_UDP,
		};
		struct dst_entry *d = dst_cache_get_ip6(c, &fl.saddr);

		if (!d) {
			memcpy(&fl.daddr, daddr, 16);
			d = ipv6_stub->ipv6_dst_lookup_flow(sock_net(sk), sk, &fl, NULL);
			if (IS_ERR(d))
				return PTR_ERR(d);
			if (unlikely(d->dev == dev)) {
				dst_release(d);
				return -ELOOP;
			}
			*fresh = true;
		}
		memcpy(saddr, &fl.saddr, 16);
		*dst = d;
		return 0;
	}
#endif
	return -EAFNOSUPPORT;
}

void ntm_shim_route_keep(struct dst_cache *c, int family, struct dst_entry *dst, const u8 saddr[16])
{
	if (family == 4) {
		__be32 s;

		memcpy(&s, saddr, 4);
		dst_cache_set_ip4(c, dst, s);
	} else {
		struct in6_addr s;

		memcpy(&s, saddr, 16);
		dst_cache_set_ip6(c, dst, &s);
	}
}

void ntm_shim_route_put(struct dst_entry *dst) { dst_release(dst); }

void ntm_shim_route_xmit(struct net_device *dev, struct sock *sk, struct sk_buff *skb, int family,
			 struct dst_entry *dst, const u8 saddr[16], const u8 daddr[16], u16 dport)
{
	bool xnet = !net_eq(sock_net(sk), dev_net(dev));

	skb->dev = dev; /* the UDP tunnel core counts the device's tx stats */
	skb->ignore_df = 1;
	if (family == 4) {
		__be32 s, d;

		memcpy(&s, saddr, 4);
		memcpy(&d, daddr, 4);
		udp_tunnel_xmit_skb(dst_rtable(dst), sk, skb, s, d, 0, ip4_dst_hoplimit(dst), 0,
				    inet_sk(sk)->inet_sport, htons(dport), xnet, false);
	} else {
#if IS_ENABLED(CONFIG_IPV6)
		struct in6_addr s, d;

		memcpy(&s, saddr, 16);
		memcpy(&d, daddr, 16);
		udp_tunnel6_xmit_skb(dst, sk, skb, dev, &s, &d, 0, ip6_dst_hoplimit(dst), 0,
				     inet_sk(sk)->inet_sport, htons(dport), false);
#else
		dst_release(dst);
		kfree_skb(skb);
#endif
	}
}

/* ---- UDP sockets handed over by userspace (the l2tp model) ---- */

static int ntm_encap_rcv(struct sock *sk, struct sk_buff *skb)
{
	return ntm_rs_encap_rcv(sk, skb);
}

static void ntm_encap_destroy(struct sock *sk)
{
	ntm_rs_encap_destroy(sk);
}

/*
 * Takes over the bound UDP socket behind the caller's fd: data packets go to ntm_encap_rcv,
 * everything else stays on the socket's queue. Returns the sock with a reference held, or
 * NULL with *err and *why (an extack message) set; *err is -EALREADY when the socket already
 * serves this device.
 */
struct sock *ntm_shim_sock_attach(struct net_device *dev, int fd, int family, const char **why,
				  int *err)
{
	struct udp_tunnel_sock_cfg cfg = {
		.sk_user_data = dev,
		.encap_type = 1,
		.encap_rcv = ntm_encap_rcv,
		.encap_destroy = ntm_encap_destroy,
	};
	struct socket *sock;
	struct sock *sk;
	void *owner;

	sock = sockfd_lookup(fd, err);
	if (!sock) {
		*why = "ntm: not a socket";
		return NULL;
	}
	sk = sock->sk;
	lock_sock(sk);
	write_lock_bh(&sk->sk_callback_lock);
	owner = sk->sk_user_data;
	if (sk->sk_type != SOCK_DGRAM || sk->sk_protocol != IPPROTO_UDP) {
		*why = "ntm: not a UDP socket";
		*err = -EPROTONOSUPPORT;
	} else if (sk->sk_family != family) {
		*why = family == AF_INET ? "ntm: sock-fd4 is not an IPv4 socket" :
					   "ntm: sock-fd6 is not an IPv6 socket";
		*err = -EAFNOSUPPORT;
	} else if (family == AF_INET6 && !ipv6_only_sock(sk)) {
		*why = "ntm: sock-fd6 must be IPV6_V6ONLY";
		*err = -EINVAL;
	} else if (!inet_sk(sk)->inet_num) {
		*why = "ntm: socket is not bound";
		*err = -EINVAL;
	} else if (owner) {
		if (READ_ONCE(udp_sk(sk)->encap_rcv) == ntm_encap_rcv &&
		    ((uintptr_t)owner & SK_USER_DATA_PTRMASK) == (uintptr_t)dev) {
			*why = "ntm: socket already serves this device";
			*err = -EALREADY;
		} else {
			*why = "ntm: socket already in use by another tunnel";
			*err = -EBUSY;
		}
	} else {
		*err = 0;
	}
	write_unlock_bh(&sk->sk_callback_lock);
	if (*err) {
		release_sock(sk);
		sockfd_put(sock);
		return NULL;
	}
	setup_udp_tunnel_sock(sock_net(sk), sock, &cfg);
	release_sock(sk);
	sock_hold(sk);
	sockfd_put(sock);
	return sk;
}

/* Gives the socket back to plain UDP; the caller waits an RCU grace period, then puts it. */
void ntm_shim_sock_detach(struct sock *sk)
{
	write_lock_bh(&sk->sk_callback_lock);
	WRITE_ONCE(udp_sk(sk)->encap_type, 0);
	WRITE_ONCE(udp_sk(sk)->encap_rcv, NULL);
	WRITE_ONCE(udp_sk(sk)->encap_destroy, NULL);
	rcu_assign_sk_user_data(sk, NULL);
	write_unlock_bh(&sk->sk_callback_lock);
}

void ntm_shim_sock_put(struct sock *sk) { sock_put(sk); }
bool ntm_shim_sock_dead(const struct sock *sk) { return sock_flag(sk, SOCK_DEAD); }
struct net_device *ntm_shim_sock_dev(struct sock *sk) { return rcu_dereference_sk_user_data(sk); }

/* ---- generic netlink family `ntm`: policies and ops in ntm_nl_gen.c (kmod/spec/ntm.yaml) ---- */

static struct genl_family ntm_nl_family = {
	.name = NTM_FAMILY_NAME,
	.version = NTM_FAMILY_VERSION,
	.netnsok = true,
	.module = THIS_MODULE,
	.split_ops = ntm_nl_ops,
	.n_split_ops = ARRAY_SIZE(ntm_nl_ops),
	.resv_start_op = NTM_CMD_TUNNEL_DEL + 1,
	.mcgrps = ntm_nl_mcgrps,
	.n_mcgrps = ARRAY_SIZE(ntm_nl_mcgrps),
};

int ntm_shim_genl_register(void) { return genl_register_family(&ntm_nl_family); }
void ntm_shim_genl_unregister(void) { genl_unregister_family(&ntm_nl_family); }

struct nlattr *ntm_shim_info_attr(const struct genl_info *info, int type)
{
	/* Every op's policy spans the whole set, so attrs has NTM_A_MAX + 1 slots. */
	if (type < 1 || type > NTM_A_MAX)
		return NULL;
	return info->attrs[type];
}

struct net *ntm_shim_info_net(const struct genl_info *info) { return genl_info_net(info); }

/* msg must be static (extack keeps the pointer). */
void ntm_shim_info_error(const struct genl_info *info, const char *msg, const struct nlattr *bad)
{
	if (!info->extack)
		return;
	info->extack->_msg = msg;
	if (bad)
		NL_SET_BAD_ATTR(info->extack, bad);
}

void ntm_shim_info_missing(const struct genl_info *info, const struct nlattr *nest, int type)
{
	NL_SET_ERR_ATTR_MISS(info->extack, nest, type);
}

/* tb has NTM_A_TUNNEL_MAX + 1 slots. */
int ntm_shim_info_parse_tunnel(const struct genl_info *info, const struct nlattr *nest,
			       struct nlattr **tb)
{
	return nla_parse_nested(tb, NTM_A_TUNNEL_MAX, nest, ntm_tunnel_nl_policy, info->extack);
}

const void *ntm_shim_nla_data(const struct nlattr *nla) { return nla_data(nla); }
int ntm_shim_nla_len(const struct nlattr *nla) { return nla_len(nla); }
const struct genl_info *ntm_shim_cb_info(struct netlink_callback *cb) { return genl_info_dump(cb); }
long *ntm_shim_cb_args(struct netlink_callback *cb) { return cb->args; }

struct sk_buff *ntm_shim_msg_new(bool atomic)
{
	return genlmsg_new(NLMSG_GOODSIZE, atomic ? GFP_ATOMIC : GFP_KERNEL);
}

void ntm_shim_msg_free(struct sk_buff *msg) { nlmsg_free(msg); }

void *ntm_shim_msg_put_reply(struct sk_buff *msg, const struct genl_info *info, u8 cmd)
{
	return genlmsg_put_reply(msg, (struct genl_info *)info, &ntm_nl_family, 0, cmd);
}

void *ntm_shim_msg_put_dump(struct sk_buff *msg, struct netlink_callback *cb, u8 cmd)
{
	return genlmsg_put(msg, NETLINK_CB(cb->skb).portid, cb->nlh->nlmsg_seq, &ntm_nl_family,
			   NLM_F_MULTI, cmd);
}

void *ntm_shim_msg_put_event(struct sk_buff *msg, u8 cmd)
{
	return genlmsg_put(msg, 0, 0, &ntm_nl_family, 0, cmd);
}

void ntm_shim_msg_end(struct sk_buff *msg, void *hdr) { genlmsg_end(msg, hdr); }
void ntm_shim_msg_cancel(struct sk_buff *msg, void *hdr) { genlmsg_cancel(msg, hdr); }

int ntm_shim_msg_reply(struct sk_buff *msg, const struct genl_info *info)
{
	return genlmsg_reply(msg, (struct genl_info *)info);
}

int ntm_shim_msg_multicast(struct sk_buff *msg, struct net *net, bool atomic)
{
	return genlmsg_multicast_netns(&ntm_nl_family, net, msg, 0, NTM_NLGRP_EVENTS,
				       atomic ? GFP_ATOMIC : GFP_KERNEL);
}

int ntm_shim_nla_put(struct sk_buff *msg, int type, const void *data, int len)
{
	return nla_put(msg, type, len, data);
}

int ntm_shim_nla_put_uint(struct sk_buff *msg, int type, u64 value)
{
	return nla_put_uint(msg, type, value);
}

struct nlattr *ntm_shim_nest_start(struct sk_buff *msg, int type) { return nla_nest_start(msg, type); }
void ntm_shim_nest_end(struct sk_buff *msg, struct nlattr *nest) { nla_nest_end(msg, nest); }

MODULE_ALIAS_RTNL_LINK(KBUILD_MODNAME);
MODULE_ALIAS_GENL_FAMILY(NTM_FAMILY_NAME);

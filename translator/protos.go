package translator

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/spokeproxy/spoke/translator/model"
)

// typed wraps a message in an Any, marshalled deterministically so that equal
// config always hashes to the same version. Marshalling a well-formed generated
// message cannot fail, so a failure is a programming error.
func typed(m proto.Message) *anypb.Any {
	a := new(anypb.Any)
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic("translator: marshal " + string(proto.MessageName(m)) + ": " + err.Error())
	}
	return a
}

func dur(d model.Duration) *durationpb.Duration { return durationpb.New(time.Duration(d)) }

// ads is the config source for every dynamic reference: one ADS stream per Envoy.
func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: ads()}
}

func keepalive(s model.Settings) *corev3.KeepaliveSettings {
	return &corev3.KeepaliveSettings{Interval: dur(s.KeepaliveInterval), Timeout: dur(s.KeepaliveTimeout)}
}

func http2Options(s model.Settings) *corev3.Http2ProtocolOptions {
	return &corev3.Http2ProtocolOptions{
		ConnectionKeepalive:         keepalive(s),
		InitialStreamWindowSize:     optionalUint32(s.TunnelStreamWindow),
		InitialConnectionWindowSize: optionalUint32(s.TunnelConnectionWindow),
	}
}

// The Linux numbers of TCP_NOTSENT_LOWAT (linux/tcp.h) and its level: the
// config is for Envoys on Linux whatever the OS that translates it.
const (
	ipProtoTCP      = 6
	tcpNotSentLowat = 25
)

// tunnelSocketOptions limit the unsent bytes the kernel queues on a tunnel
// socket (TunnelUnsentLimit), in state: STATE_PREBIND for the node proxy's
// dialled tunnels, STATE_LISTENING for the apiserver proxy's listener, whose
// accepted sockets inherit it.
func tunnelSocketOptions(s model.Settings, state corev3.SocketOption_SocketState) []*corev3.SocketOption {
	if s.TunnelUnsentLimit == 0 {
		return nil
	}
	return []*corev3.SocketOption{{
		Description: "TCP_NOTSENT_LOWAT: a new stream's first frame waits behind little unsent data",
		Level:       ipProtoTCP,
		Name:        tcpNotSentLowat,
		Value:       &corev3.SocketOption_IntValue{IntValue: int64(s.TunnelUnsentLimit)},
		State:       state,
	}}
}

// tunnelConnectionOptions turn off Envoy's connection idle timeout (1 hour by
// default) on both ends of a tunnel: a tunnel with no stream for an hour is
// not dead (HTTP/2 PINGs find dead ones), and closing it would leave its
// apiserver-proxy worker without a tunnel to the node until the node
// re-dials, so CONNECTs landing there would fail meanwhile.
func tunnelConnectionOptions() *corev3.HttpProtocolOptions {
	return &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(0)}
}

// optionalUint32 leaves 0 unset: Envoy's default.
func optionalUint32(v uint32) *wrapperspb.UInt32Value {
	if v == 0 {
		return nil
	}
	return wrapperspb.UInt32(v)
}

func stringMetadata(namespace, key, value string) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		namespace: {Fields: map[string]*structpb.Value{key: structpb.NewStringValue(value)}},
	}}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// tls13 pins tunnels to TLS 1.3. Envoy's client side defaults to a TLS 1.2
// maximum, so both bounds are set.
func tls13() *tlsv3.TlsParameters {
	return &tlsv3.TlsParameters{
		TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
	}
}

func tlsTransportSocket(ctx proto.Message) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: typed(ctx)},
	}
}

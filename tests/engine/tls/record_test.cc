// engine/tls/record.cc: the TLS 1.3 record layer a connection runs on after its handshake,
// checked against RFC 8448's traces (section 3, a simple 1-RTT handshake with
// TLS_AES_128_GCM_SHA256): the traffic keys derived from the application secrets, and the
// application data records both sides send, byte for byte.
#include "engine/tls/record.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace tls {
namespace {

std::vector<uint8_t> hex(const std::string& text) {
  std::vector<uint8_t> out;
  for (std::size_t i = 0; i + 1 < text.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(text.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// RFC 8448 section 3.
const char kServerSecret[] = "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643";
const char kClientSecret[] = "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
const char kServerRecord[] =  // seq 1: the server's NewSessionTicket was seq 0
    "17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30efaf97d90e6dffc602dcb"
    "501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d";
const char kClientRecord[] =  // seq 0
    "1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b9819a8a5b46b395bd54a9a"
    "20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4";

std::vector<uint8_t> payload() {  // 00 01 .. 31, what both sides send
  std::vector<uint8_t> p(50);
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<uint8_t>(i);
  return p;
}

// The server's view: it writes with its secret and reads with the client's.
RecordKeys server_keys() {
  RecordKeys keys{};
  EXPECT_TRUE(aead_of_suite(0x1301, &keys.aead, &keys.hash_len));
  std::memcpy(keys.write.secret, hex(kServerSecret).data(), 32);
  std::memcpy(keys.read.secret, hex(kClientSecret).data(), 32);
  EXPECT_TRUE(derive_traffic_keys(keys, &keys.write));
  EXPECT_TRUE(derive_traffic_keys(keys, &keys.read));
  return keys;
}

TEST(RecordTest, TrafficKeysAreThoseOfRfc8448) {
  const RecordKeys keys = server_keys();
  EXPECT_EQ(std::vector<uint8_t>(keys.write.key, keys.write.key + 16),
            hex("9f02283b6c9c07efc26bb9f2ac92e356"));
  EXPECT_EQ(std::vector<uint8_t>(keys.write.iv, keys.write.iv + 12),
            hex("cf782b88dd83549aadf1e984"));
  EXPECT_EQ(std::vector<uint8_t>(keys.read.key, keys.read.key + 16),
            hex("17422dda596ed5d9acd890e3c63f5051"));
  EXPECT_EQ(std::vector<uint8_t>(keys.read.iv, keys.read.iv + 12),
            hex("5b78923dee08579033e523d9"));
}

TEST(RecordTest, SealedRecordIsRfc8448sByteForByte) {
  RecordKeys keys = server_keys();
  keys.write.seq = 1;
  std::vector<uint8_t> rec(kHeaderBytes + 50 + 1 + kTagBytes);
  const std::vector<uint8_t> data = payload();
  std::memcpy(rec.data() + kHeaderBytes, data.data(), data.size());
  ASSERT_EQ(seal(keys, ContentType::kApplicationData, rec.data(), data.size()), rec.size());
  EXPECT_EQ(rec, hex(kServerRecord));
  EXPECT_EQ(keys.write.seq, 2u);
}

TEST(RecordTest, OpensRfc8448sClientRecordInPlace) {
  RecordKeys keys = server_keys();
  std::vector<uint8_t> rec = hex(kClientRecord);
  ContentType type;
  std::size_t len = 0;
  const char* why = nullptr;
  ASSERT_TRUE(open(keys, rec.data(), rec.size(), &type, &len, &why)) << why;
  EXPECT_EQ(type, ContentType::kApplicationData);
  EXPECT_EQ(std::vector<uint8_t>(rec.begin() + kHeaderBytes, rec.begin() + kHeaderBytes + len),
            payload());
  EXPECT_EQ(keys.read.seq, 1u);
}

TEST(RecordTest, TamperedOrReplayedRecordsAreRefused) {
  RecordKeys keys = server_keys();
  const char* why = nullptr;
  ContentType type;
  std::size_t len = 0;
  std::vector<uint8_t> rec = hex(kClientRecord);
  rec[20] ^= 1;
  EXPECT_FALSE(open(keys, rec.data(), rec.size(), &type, &len, &why));
  EXPECT_STREQ(why, "bad record MAC");
  // The same record again, after it was read: its sequence number is spent.
  RecordKeys fresh = server_keys();
  std::vector<uint8_t> first = hex(kClientRecord), again = hex(kClientRecord);
  ASSERT_TRUE(open(fresh, first.data(), first.size(), &type, &len, &why));
  EXPECT_FALSE(open(fresh, again.data(), again.size(), &type, &len, &why));
  std::vector<uint8_t> tiny = {23, 3, 3, 0, 4, 1, 2, 3, 4};
  EXPECT_FALSE(open(fresh, tiny.data(), tiny.size(), &type, &len, &why));
}

// Both ends of one direction: the writer's keys, and the reader's copy of them.
struct Pair {
  RecordKeys writer{}, reader{};
};

Pair pair_for(uint16_t suite) {
  Pair p;
  EXPECT_TRUE(aead_of_suite(suite, &p.writer.aead, &p.writer.hash_len));
  for (std::size_t i = 0; i < p.writer.hash_len; ++i) p.writer.write.secret[i] = uint8_t(i * 7);
  EXPECT_TRUE(derive_traffic_keys(p.writer, &p.writer.write));
  p.reader = p.writer;
  p.reader.read = p.writer.write;
  return p;
}

TEST(RecordTest, EverySuiteRoundTripsAFullRecordAndEveryContentType) {
  for (const uint16_t suite : {0x1301, 0x1302, 0x1303}) {
    Pair p = pair_for(suite);
    for (const ContentType t :
         {ContentType::kApplicationData, ContentType::kHandshake, ContentType::kAlert}) {
      for (const std::size_t n : {std::size_t{0}, std::size_t{1}, kMaxPlaintext}) {
        std::vector<uint8_t> rec(n + kSealOverhead);
        for (std::size_t i = 0; i < n; ++i) rec[kHeaderBytes + i] = uint8_t(i * 31 + n);
        const std::vector<uint8_t> sent(rec.begin() + kHeaderBytes, rec.begin() + kHeaderBytes + n);
        ASSERT_EQ(seal(p.writer, t, rec.data(), n), rec.size());
        ContentType got;
        std::size_t len = 0;
        const char* why = nullptr;
        ASSERT_TRUE(open(p.reader, rec.data(), rec.size(), &got, &len, &why))
            << "suite " << suite << " n " << n << ": " << why;
        EXPECT_EQ(got, t);
        EXPECT_EQ(std::vector<uint8_t>(rec.begin() + kHeaderBytes,
                                       rec.begin() + kHeaderBytes + len), sent);
      }
    }
  }
  RecordKeys keys{};
  EXPECT_FALSE(aead_of_suite(0x1304, &keys.aead, &keys.hash_len));  // CCM is not offered
}

TEST(RecordTest, KeyUpdateMovesBothEndsToTheSameNewKeys) {
  Pair p = pair_for(0x1302);
  const std::vector<uint8_t> old_key(p.writer.write.key, p.writer.write.key + 32);
  ASSERT_TRUE(update_traffic_secret(p.writer, &p.writer.write));
  ASSERT_TRUE(update_traffic_secret(p.reader, &p.reader.read));
  EXPECT_NE(std::vector<uint8_t>(p.writer.write.key, p.writer.write.key + 32), old_key);
  EXPECT_EQ(p.writer.write.seq, 0u);
  std::vector<uint8_t> rec(3 + kSealOverhead);
  ASSERT_NE(seal(p.writer, ContentType::kApplicationData, rec.data(), 3), 0u);
  ContentType got;
  std::size_t len = 0;
  const char* why = nullptr;
  EXPECT_TRUE(open(p.reader, rec.data(), rec.size(), &got, &len, &why)) << why;
}

TEST(RecordTest, PaddingIsStrippedAndAllZeroPlaintextRefused) {
  // A peer may pad its records (RFC 8446 5.4).
  // seal() appends the type it is given: 0 here, after "hello", 23, 0, so the record's inner
  // plaintext is "hello", type 23 and two bytes of padding.
  Pair p = pair_for(0x1301);
  std::vector<uint8_t> rec(7 + kSealOverhead);
  const uint8_t inner[] = {'h', 'e', 'l', 'l', 'o', 23, 0};
  std::memcpy(rec.data() + kHeaderBytes, inner, sizeof inner);
  ASSERT_EQ(seal(p.writer, static_cast<ContentType>(0), rec.data(), sizeof inner), rec.size());
  ContentType got;
  std::size_t len = 0;
  const char* why = nullptr;
  ASSERT_TRUE(open(p.reader, rec.data(), rec.size(), &got, &len, &why)) << why;
  EXPECT_EQ(got, ContentType::kApplicationData);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(rec.data()) + kHeaderBytes, len), "hello");
  std::vector<uint8_t> zeros(4 + kSealOverhead, 0);
  ASSERT_EQ(seal(p.writer, static_cast<ContentType>(0), zeros.data(), 4), zeros.size());
  EXPECT_FALSE(open(p.reader, zeros.data(), zeros.size(), &got, &len, &why));
  EXPECT_STREQ(why, "a record without a content type");
}

}  // namespace
}  // namespace tls

// kNN-LM fusion math (lm/knnlm.h): the limits the paper's formula must meet.
#include "lm/knnlm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace rag::lm {
namespace {

TEST(KnnLm, KnnLogProbIsTheSoftmaxMassOfNeighboursWithTheToken) {
  const int32_t values[] = {5, 7, 5};
  const float distances[] = {1.0f, 2.0f, 3.0f};
  const double z = std::exp(-1.0) + std::exp(-2.0) + std::exp(-3.0);
  EXPECT_NEAR(KnnLogProb(values, distances, 3, 5, 1.0), std::log((std::exp(-1.0) + std::exp(-3.0)) / z), 1e-6);
  EXPECT_NEAR(KnnLogProb(values, distances, 3, 7, 1.0), std::log(std::exp(-2.0) / z), 1e-6);
  EXPECT_EQ(KnnLogProb(values, distances, 3, 9, 1.0), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(KnnLogProb(values, distances, 0, 5, 1.0), -std::numeric_limits<float>::infinity());
  // A high temperature flattens towards counting: 2 of 3 neighbours.
  EXPECT_NEAR(KnnLogProb(values, distances, 3, 5, 1e6), std::log(2.0 / 3.0), 1e-4);
  // Huge distances (hidden states far apart) do not underflow to 0/0.
  const float far[] = {5000.0f, 5001.0f, 5002.0f};
  EXPECT_TRUE(std::isfinite(KnnLogProb(values, far, 3, 5, 1.0)));
}

TEST(KnnLm, LambdaZeroIsTheLmExactlyAndLambdaOneIsTheKnn) {
  EXPECT_EQ(InterpolateLogProb(-2.5f, -0.1f, 0.0), -2.5f);
  EXPECT_EQ(InterpolateLogProb(-2.5f, -0.1f, 1.0), -0.1f);
  EXPECT_NEAR(InterpolateLogProb(-2.5f, -0.1f, 0.25), std::log(0.25 * std::exp(-0.1) + 0.75 * std::exp(-2.5)), 1e-6);
  // A token no neighbour has keeps (1 - lambda) of its LM probability.
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_NEAR(InterpolateLogProb(-2.0f, ninf, 0.25), std::log(0.75) - 2.0, 1e-6);
}

TEST(KnnLm, InterpolatedDistributionSumsToOneAndLambdaOneWithOneNeighbourIsOneHot) {
  torch::Tensor lm = torch::log_softmax(torch::randn({50}), 0);
  const int32_t values[] = {3, 3, 17};
  const float distances[] = {0.5f, 0.7f, 0.9f};
  torch::Tensor mixed = InterpolateLogDistribution(lm, values, distances, 3, 0.3, 1.0);
  EXPECT_NEAR(mixed.exp().sum().item<float>(), 1.0f, 1e-5);
  EXPECT_TRUE(torch::equal(InterpolateLogDistribution(lm, values, distances, 3, 0.0, 1.0), lm));
  // k = 1, lambda = 1: all mass on the one neighbour's token.
  torch::Tensor onehot = InterpolateLogDistribution(lm, values, distances, 1, 1.0, 1.0).exp();
  EXPECT_NEAR(onehot[3].item<float>(), 1.0f, 1e-6);
  EXPECT_NEAR(onehot.sum().item<float>(), 1.0f, 1e-6);
}

}  // namespace
}  // namespace rag::lm
